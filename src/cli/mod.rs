//! The command line: `serve`, `migrate` and the operator commands that make a fresh install
//! usable without OAuth apps.

mod commands;
mod dev;

use clap::{Args, Parser, Subcommand};

pub use commands::run;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An AI API relay station: keys, prepaid balances, exact billing, an OpenAI-compatible proxy."
)]
pub struct Cli {
    /// User, key, subscription and model commands: create the SQLite database file when it does
    /// not exist yet. Without it they refuse, so a command run from the wrong directory cannot
    /// quietly start a second, empty database.
    #[arg(long, global = true)]
    pub create: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server and the background jobs (migrates first unless told not to).
    Serve(ServeArgs),
    /// Apply database migrations; running it again changes nothing.
    Migrate,
    /// Manage users: create, show, top up, disable.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage token subscriptions.
    #[command(subcommand)]
    Subscription(SubscriptionCommand),
    /// Manage the model catalogue and prices.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Read the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Make and list redemption codes.
    #[command(subcommand)]
    Code(CodeCommand),
    /// Measure at scale: fill the database with customers and usage, time the dashboard's and
    /// the back office's queries (see bench/data-scale.sh). Not for a production database.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Manage channels: the upstream accounts requests are routed to.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Ask the server on LISTEN_ADDR for /healthz; exit 0 when it answers 200 (the container's
    /// health check: the image has no curl).
    Healthcheck {
        /// Another address to ask (IP:PORT); defaults to LISTEN_ADDR, with 0.0.0.0 and [::]
        /// asked on loopback.
        #[arg(long)]
        addr: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per run; boxing would only complicate the match")]
pub enum ModelCommand {
    /// List every model with its prices and limits.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a model or change it. Prices are currency units per 1M tokens (such as 2.50).
    Set {
        /// The name clients send as `model`.
        name: String,
        #[arg(long)]
        input_price: Option<String>,
        #[arg(long)]
        output_price: Option<String>,
        /// Per 1M prompt tokens read from the prompt cache; `default` clears it (the input price).
        #[arg(long)]
        cache_read_price: Option<String>,
        /// Per 1M prompt tokens written to the prompt cache for 5 minutes; `default` clears it
        /// (1.25 × the input price). A 1-hour write costs 1.6 × this.
        #[arg(long)]
        cache_write_price: Option<String>,
        /// Per request, on top of the tokens (such as 0.01).
        #[arg(long)]
        request_price: Option<String>,
        /// The most output tokens one request may ask for (and the default reservation).
        #[arg(long)]
        max_output: Option<i64>,
        /// Prompt plus output tokens the model accepts.
        #[arg(long)]
        context_window: Option<i64>,
        /// The model name sent upstream (defaults to NAME).
        #[arg(long)]
        upstream_model: Option<String>,
        #[arg(long)]
        enabled: Option<bool>,
        /// The request field that carries the output cap upstream: `max_completion_tokens`
        /// (OpenAI) or `max_tokens` (most other OpenAI-compatible servers).
        #[arg(long)]
        cap_field: Option<String>,
    },
    /// Delete a model that was never used (one with usage is refused: disable it instead).
    Delete {
        /// The model's name.
        name: String,
    },
}

/// A channel's settings, for `channel add` and `channel set`.
#[derive(Debug, Args)]
pub struct ChannelArgs {
    /// The provider type: `openai` (any OpenAI-compatible API) or `anthropic`.
    #[arg(long = "type", value_name = "TYPE")]
    pub provider: Option<String>,
    /// The upstream API's base URL, such as https://api.openai.com/v1.
    #[arg(long)]
    pub base_url: Option<String>,
    /// The models served, comma-separated; `name=upstream-name` maps a catalogue name to the
    /// upstream's, and `*` serves every catalogue model.
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Higher priorities are tried first; lower ones serve when they fail.
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Share of the traffic among channels of one priority (1 to 1000).
    #[arg(long, allow_hyphen_values = true)]
    pub weight: Option<i32>,
    /// An extra request header, `Name: value` (repeatable); stored encrypted.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Read the upstream keys from standard input, one per line (`set`: they replace the
    /// current keys). Keys are never taken from the command line.
    #[arg(long)]
    pub keys_stdin: bool,
    /// Refused: a key on the command line lands in the shell history and the process list.
    #[arg(long = "key", alias = "keys", alias = "api-key", hide = true, num_args = 0.., allow_hyphen_values = true)]
    pub key: Option<Vec<String>>,
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Add a channel (keys with --keys-stdin: `tollgate channel add … --keys-stdin < keys.txt`).
    Add {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        args: ChannelArgs,
    },
    /// List channels with their masked keys and state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change a channel (by name or id); options not given keep their value.
    Set {
        /// The channel's name or id.
        channel: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Remove every extra header.
        #[arg(long, conflicts_with = "headers")]
        clear_headers: bool,
        /// Enable again every key that is disabled (such as keys the upstream refused).
        #[arg(long, conflicts_with = "keys_stdin")]
        enable_keys: bool,
        #[command(flatten)]
        args: ChannelArgs,
    },
    /// Send a 1-token request through the channel and print the status and latency.
    Test {
        /// The channel's name or id.
        channel: String,
    },
    /// Route requests to the channel again (clears a disabled reason).
    Enable {
        /// The channel's name or id.
        channel: String,
    },
    /// Stop routing requests to the channel.
    Disable {
        /// The channel's name or id.
        channel: String,
    },
    /// Delete the channel and its keys (usage rows keep its id).
    Delete {
        /// The channel's name or id.
        channel: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit entries, newest first.
    List {
        /// A user id, an email, or `system` for the command line and jobs.
        #[arg(long)]
        actor: Option<String>,
        /// An action (`balance.adjust`) or a family (`model`).
        #[arg(long)]
        action: Option<String>,
        /// `type:id` (`user:12`), a type, or an id.
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        page: PageArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CodeCommand {
    /// Create a batch of codes and print them as CSV on stdout
    /// (`code,amount,tokens,days,expires_at`): the only time they are shown.
    Create {
        /// How many codes (1 to 1000).
        #[arg(long, allow_hyphen_values = true)]
        count: i64,
        /// Money each code adds to a balance, in currency units (such as 10.00).
        #[arg(long, conflicts_with_all = ["tokens", "days"], required_unless_present = "tokens")]
        amount: Option<String>,
        /// Subscription tokens each code grants (with --days).
        #[arg(long, requires = "days", allow_hyphen_values = true)]
        tokens: Option<i64>,
        /// Days the granted subscription lasts from redemption (with --tokens).
        #[arg(long, requires = "tokens", allow_hyphen_values = true)]
        days: Option<i64>,
        /// The codes stop working this many days from now.
        #[arg(long, allow_hyphen_values = true)]
        expires_days: Option<i64>,
        /// What the batch is for (sold to whom, which campaign).
        #[arg(long)]
        note: Option<String>,
    },
    /// List batches, newest first, with how many of their codes were redeemed.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Which page of a list to print.
#[derive(Debug, Args)]
pub struct PageArgs {
    #[arg(long, default_value_t = 1)]
    pub page: u64,
    #[arg(long, default_value_t = 50)]
    pub page_size: u64,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Do not apply migrations at start (same as AUTO_MIGRATE=false).
    #[arg(long)]
    pub no_migrate: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (with a password, to sign in without OAuth).
    Create {
        #[arg(long)]
        email: String,
        /// Password for email sign-in (at least 10 characters). Prefer --password-stdin.
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Make the user an operator (role admin).
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a user's role, balance, subscriptions and key count.
    Show {
        #[arg(long)]
        email: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add money to a user's balance (a ledger entry and an audit entry, in one transaction).
    Topup {
        #[arg(long)]
        email: String,
        /// Amount in currency units, such as 12.50 (at most 6 decimals).
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Why, for the ledger and the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Add to or take from a user's balance (`--amount -3.00` corrects); never below zero.
    Adjust {
        #[arg(long)]
        email: String,
        /// Signed amount in currency units, such as 12.50 or -3.00 (at most 6 decimals).
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Why, for the ledger and the audit log.
        #[arg(long)]
        reason: String,
    },
    /// List users, newest first, with balance, subscription tokens, keys and recent spend.
    List {
        /// Part of the email or name.
        #[arg(long)]
        q: Option<String>,
        /// `user` or `admin`.
        #[arg(long)]
        role: Option<String>,
        /// `active` or `disabled`.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: PageArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: their keys stop working within seconds.
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Enable a disabled user again.
    Enable {
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List a user's keys (revoked ones included); never a plaintext.
    List {
        #[arg(long)]
        email: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a key and print only its plaintext on stdout (shown once, never stored).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke a key by id (for good).
    Revoke {
        #[arg(long)]
        id: i64,
    },
    /// Disable a key by id; it can be enabled again.
    Disable {
        #[arg(long)]
        id: i64,
    },
    /// Enable a disabled key.
    Enable {
        #[arg(long)]
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionCommand {
    /// Grant a token package valid for some days from now.
    Grant {
        #[arg(long)]
        email: String,
        /// Tokens in the package.
        #[arg(long, allow_hyphen_values = true)]
        tokens: i64,
        /// Days until it expires.
        #[arg(long, allow_hyphen_values = true)]
        days: i64,
        #[arg(long, default_value = "subscription")]
        name: String,
    },
    /// Extend a subscription from its current end date (optionally adding tokens).
    Renew {
        #[arg(long)]
        id: i64,
        #[arg(long)]
        days: i64,
        #[arg(long, default_value_t = 0)]
        tokens: i64,
    },
    /// Zero every expired subscription now (the daily job, run by hand).
    Expire,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Create customers (`seed-NNNNN@seed.invalid`, one key each, a top-up each) and usage rows
    /// spread evenly over the days ending now.
    SeedUsage {
        #[arg(long, default_value_t = 5_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 1000)]
        users: u32,
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
    /// Time the dashboard's and the back office's queries for the customer with the most rows,
    /// and print a Markdown table.
    QueryTimes {
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
}
