//! Prices per token class and the one cost function every charge goes through.
//!
//! A model has an input and an output price, and optionally a cache-read price, a cache-write
//! price and a price per request. Unset cache prices take defaults that never bill below what
//! an upstream may charge for the class:
//! - cache read = the input price (no discount unless the operator sets one);
//! - cache write (5 minutes) = 1.25 × the input price;
//! - a 1-hour cache write = 1.6 × the cache-write price (Anthropic bills 2× input against
//!   1.25× for 5 minutes).
//!
//! Derived prices round up to the micro-unit. Reasoning tokens are output tokens: they are
//! billed once, at the output price.
//!
//! A reservation prices every prompt token at the dearest class the upstream may bill it in:
//! a cache write only when the request asks for one (`CacheWrites`), else the input price or the
//! cache-read price, whichever is higher.

use std::cmp::{max, min};

use crate::gateway::settle::Usage;

/// A model's prices: micro-units per 1M tokens of each class, and micro-units per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
    pub cache_write_1h: i64,
    pub request: i64,
}

/// `ceil(price × num / den)` for a non-negative price, saturating.
fn scaled_up(price: i64, num: i128, den: i128) -> i64 {
    let p = i128::from(max(price, 0)) * num;
    i64::try_from((p + den - 1) / den).unwrap_or(i64::MAX)
}

/// The default cache-write (5 minutes) price for an input price: 1.25 × input, rounded up.
pub fn default_cache_write(input: i64) -> i64 {
    scaled_up(input, 5, 4)
}

/// The 1-hour cache-write price for a cache-write price: 1.6 × it, rounded up.
pub fn cache_write_1h(cache_write: i64) -> i64 {
    scaled_up(cache_write, 8, 5)
}

/// The prompt-cache writes a request may cause: what decides whether its prompt tokens can be
/// billed at a cache-write price. Only an Anthropic Messages request that carries
/// `cache_control` writes to the cache; no other protocol reports cache writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheWrites {
    /// No writes: prompt tokens are billed as input or cache reads.
    #[default]
    None,
    /// 5-minute writes (`cache_control` without a `ttl`, or `"ttl": "5m"`).
    FiveMinutes,
    /// 1-hour writes (some `cache_control` has `"ttl": "1h"`), and 5-minute ones.
    OneHour,
}

impl Prices {
    /// The prices a model bills, its unset cache prices replaced by their defaults.
    pub fn of_model(input: i64, output: i64, cache_read: Option<i64>, cache_write: Option<i64>, request: i64) -> Self {
        let cache_write = cache_write.unwrap_or_else(|| default_cache_write(input));
        Self {
            input,
            output,
            cache_read: cache_read.unwrap_or(input),
            cache_write,
            cache_write_1h: cache_write_1h(cache_write),
            request: max(request, 0),
        }
    }

    /// Every input-side class at the input price and no price per request.
    pub const fn flat(input: i64, output: i64) -> Self {
        Self { input, output, cache_read: input, cache_write: input, cache_write_1h: input, request: 0 }
    }

    /// Prices with only an input and an output price set; the cache classes at their defaults
    /// and no price per request.
    pub fn tokens(input: i64, output: i64) -> Self {
        Self::of_model(input, output, None, None, 0)
    }

    /// The most expensive price an input-side token of a request causing `writes` may be
    /// billed at: what a reservation prices every prompt token at, because it cannot know how
    /// the upstream will class them. The cache read counts too, in case an operator priced it
    /// above the input.
    pub fn worst_input(&self, writes: CacheWrites) -> i64 {
        let plain = max(self.input, self.cache_read);
        match writes {
            CacheWrites::None => plain,
            CacheWrites::FiveMinutes => max(plain, self.cache_write),
            CacheWrites::OneHour => max(plain, max(self.cache_write, self.cache_write_1h)),
        }
    }
}

/// `(tokens, price per 1M)` of each class of `usage`, in the order subscription tokens
/// cover them: the prompt first (its most expensive classes first), then the output.
fn classes(usage: &Usage, prices: &Prices) -> [(i64, i64); 5] {
    let mut prompt = [
        (max(usage.input, 0), prices.input),
        (max(usage.cache_read, 0), prices.cache_read),
        (max(usage.cache_write, 0), prices.cache_write),
        (max(usage.cache_write_1h, 0), prices.cache_write_1h),
    ];
    prompt.sort_by_key(|&(_, price)| std::cmp::Reverse(price));
    let [a, b, c, d] = prompt;
    [a, b, c, d, (max(usage.output, 0), prices.output)]
}

/// The cost of one request: `ceil(Σ tokens × price / 1M) + request price`, in i128, saturating
/// at `i64::MAX`. Negative counts and prices count as zero; reasoning is inside `output`.
pub fn cost(usage: &Usage, prices: &Prices) -> i64 {
    sum_cost(&classes(usage, prices), prices.request)
}

fn sum_cost(classes: &[(i64, i64)], request: i64) -> i64 {
    // Each product fits in i128; five of them may not, so the sum saturates.
    let sum =
        classes.iter().map(|&(t, p)| i128::from(max(t, 0)) * i128::from(max(p, 0))).fold(0i128, i128::saturating_add);
    let micros = (sum / 1_000_000 + i128::from(sum % 1_000_000 != 0)).saturating_add(i128::from(max(request, 0)));
    i64::try_from(micros).unwrap_or(i64::MAX)
}

/// What a request is charged: subscription tokens consumed and money.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    pub tokens: i64,
    pub amount: i64,
    /// Of `amount`, what was taken from the balance beyond the reservation (the upstream
    /// billed more than the worst case foreseen).
    pub excess: i64,
    /// What the usage cost beyond the reservation that the balance could not cover.
    pub shortfall: i64,
}

/// The charge for `usage` when `sub_tokens` subscription tokens are available to cover it.
/// Subscription tokens count every class as a token and cover the prompt first (its most
/// expensive classes first), then the output; the rest, and the price per request, is money.
pub fn charge_for(sub_tokens: i64, usage: &Usage, prices: &Prices) -> Charge {
    let mut left = max(sub_tokens, 0);
    let mut tokens = 0i64;
    let mut uncovered = classes(usage, prices);
    for (count, _) in &mut uncovered {
        let covered = min(*count, left);
        *count -= covered;
        left -= covered;
        tokens += covered;
    }
    Charge { tokens, amount: sum_cost(&uncovered, prices.request), ..Charge::default() }
}

/// The worst case of a request of `prompt` tokens and at most `output` tokens out, causing
/// `writes`: every prompt token in the most expensive input-side class it may be billed in, the
/// whole output cap, and the price per request. Reservations, the affordable-cap search and key
/// spend caps all use it, and it is never below `charge_for` of any usage within those bounds
/// whose cache writes are among `writes`.
pub fn worst_case(sub_tokens: i64, prompt: i64, output: i64, prices: &Prices, writes: CacheWrites) -> Charge {
    let worst = Prices { input: prices.worst_input(writes), ..*prices };
    charge_for(sub_tokens, &Usage { input: prompt, output, ..Usage::default() }, &worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Prices = Prices {
        input: 2_000_000,
        output: 8_000_000,
        cache_read: 2_000_000,
        cache_write: 2_500_000,
        cache_write_1h: 4_000_000,
        request: 0,
    };

    fn usage(input: i64, output: i64) -> Usage {
        Usage { input, output, ..Usage::default() }
    }

    #[test]
    fn defaults_never_discount_and_round_up() {
        assert_eq!(Prices::tokens(2_000_000, 8_000_000), P);
        let p = Prices::of_model(3, 5, None, None, 7);
        assert_eq!((p.cache_read, p.cache_write, p.cache_write_1h, p.request), (3, 4, 7, 7));
        let p = Prices::of_model(1_000_000, 5, Some(100_000), Some(3_000_000), 0);
        assert_eq!((p.cache_read, p.cache_write, p.cache_write_1h), (100_000, 3_000_000, 4_800_000));
        assert_eq!(p.worst_input(CacheWrites::OneHour), 4_800_000);
        assert_eq!(p.worst_input(CacheWrites::FiveMinutes), 3_000_000);
        assert_eq!(p.worst_input(CacheWrites::None), 1_000_000);
        // A cache read priced above the input is the dearest class without writes.
        let p = Prices::of_model(1_000_000, 5, Some(1_200_000), None, 0);
        assert_eq!(p.worst_input(CacheWrites::None), 1_200_000);
        assert_eq!(Prices::of_model(i64::MAX, 0, None, None, 0).cache_write_1h, i64::MAX);
    }

    #[test]
    fn subscription_tokens_cover_prompt_first() {
        let c = |tokens, amount| Charge { tokens, amount, ..Charge::default() };
        assert_eq!(charge_for(0, &usage(1000, 500), &P), c(0, 2000 + 4000));
        assert_eq!(charge_for(1000, &usage(1000, 500), &P), c(1000, 4000));
        assert_eq!(charge_for(1200, &usage(1000, 500), &P), c(1200, 2400));
        assert_eq!(charge_for(5000, &usage(1000, 500), &P), c(1500, 0));
        assert_eq!(charge_for(0, &usage(-5, i64::MIN), &P), c(0, 0));
        // The most expensive prompt class is covered first.
        let u = Usage { input: 100, cache_write_1h: 100, ..Usage::default() };
        assert_eq!(charge_for(100, &u, &P), c(100, 200));
    }

    #[test]
    fn classes_are_summed_before_rounding_and_the_request_price_added_once() {
        let p = Prices { input: 1, output: 1, cache_read: 1, cache_write: 1, cache_write_1h: 1, request: 10 };
        let u = Usage { input: 1, cache_read: 1, cache_write: 1, cache_write_1h: 1, output: 1, reasoning: 1 };
        // 5 token-micros over 1M round up to one micro-unit, not five.
        assert_eq!(cost(&u, &p), 1 + 10);
        assert_eq!(cost(&Usage::default(), &p), 10);
        let m = i64::MAX;
        let huge = Usage { input: m, cache_read: m, cache_write: m, cache_write_1h: m, output: m, reasoning: m };
        let dear = Prices { input: m, output: m, cache_read: m, cache_write: m, cache_write_1h: m, request: m };
        assert_eq!(cost(&huge, &dear), i64::MAX);
    }

    #[test]
    fn the_worst_case_prices_the_prompt_at_the_dearest_class_it_may_be_billed_in() {
        assert_eq!(worst_case(0, 1000, 500, &P, CacheWrites::OneHour).amount, 4000 + 4000);
        assert_eq!(worst_case(0, 1000, 500, &P, CacheWrites::FiveMinutes).amount, 2500 + 4000);
        assert_eq!(worst_case(0, 1000, 500, &P, CacheWrites::None).amount, 2000 + 4000);
        let p = Prices { request: 3, ..P };
        for writes in [CacheWrites::None, CacheWrites::OneHour] {
            assert_eq!(
                worst_case(5000, 1000, 500, &p, writes),
                Charge { tokens: 1500, amount: 3, ..Charge::default() }
            );
        }
    }

    proptest::proptest! {
        /// Moving one token to a class priced at least as high never lowers the cost.
        #[test]
        fn moving_a_token_to_a_dearer_class_never_costs_less(
            counts in proptest::array::uniform5(0i64..10_000_000),
            prices in proptest::array::uniform5(0i64..1_000_000_000_000),
            request in 0i64..1_000_000_000,
            from in 0usize..5,
            to in 0usize..5,
            sub_tokens in 0i64..30_000_000,
        ) {
            let as_usage = |c: [i64; 5]| Usage {
                input: c[0], cache_read: c[1], cache_write: c[2], cache_write_1h: c[3], output: c[4], reasoning: 0,
            };
            let p = Prices {
                input: prices[0], cache_read: prices[1], cache_write: prices[2], cache_write_1h: prices[3],
                output: prices[4], request,
            };
            proptest::prop_assume!(counts[from] > 0 && prices[to] >= prices[from]);
            let mut moved = counts;
            moved[from] -= 1;
            moved[to] += 1;
            let (before, after) = (as_usage(counts), as_usage(moved));
            proptest::prop_assert!(cost(&after, &p) >= cost(&before, &p));
            // With subscription tokens (which cover the prompt first) the same holds for moves
            // between prompt classes.
            if from < 4 && to < 4 {
                proptest::prop_assert!(
                    charge_for(sub_tokens, &after, &p).amount >= charge_for(sub_tokens, &before, &p).amount
                );
            }
            // The worst case of the prompt and output sizes covers any split into classes; without
            // 1-hour writes, any split without them; without writes, any split into input and reads.
            let prompt = before.prompt_total();
            let covered = |writes| worst_case(sub_tokens, prompt, before.output, &p, writes).amount;
            proptest::prop_assert!(covered(CacheWrites::OneHour) >= charge_for(sub_tokens, &before, &p).amount);
            let five = Usage { cache_write: before.cache_write + before.cache_write_1h, cache_write_1h: 0, ..before };
            proptest::prop_assert!(covered(CacheWrites::FiveMinutes) >= charge_for(sub_tokens, &five, &p).amount);
            let plain = Usage {
                input: before.input + before.cache_write + before.cache_write_1h,
                cache_write: 0,
                cache_write_1h: 0,
                ..before
            };
            proptest::prop_assert!(covered(CacheWrites::None) >= charge_for(sub_tokens, &plain, &p).amount);
        }
    }
}
