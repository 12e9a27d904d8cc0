//! `fake-upstream [ADDR] [CHUNKS]`: the benchmark's upstream. Answers like OpenAI (usage in JSON
//! bodies, a usage chunk when a stream asks for it) as fast as it can.

use std::io::Write;

use tollgate_fake_upstream::{FakeUpstream, Mode};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9099".into()).parse().map_err(std::io::Error::other)?;
    let chunks: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(20);
    let fake = FakeUpstream::bind(addr, Mode::Normal, false).await?;
    fake.set_chunks(chunks);
    writeln!(std::io::stderr(), "fake upstream on http://{} ({chunks} chunks per answer)", fake.addr)?;
    tokio::signal::ctrl_c().await
}
