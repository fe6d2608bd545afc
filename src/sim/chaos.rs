//! Chaos mode: random failures mixed into Fastly API traffic, so that a client can be tested
//! under the faults it meets in production. [`Chaos`] contains the settings, and [`ChaosDice`]
//! draws the fault of each request from them.
//!
//! Fault kinds:
//! - random 500, 502 and 503 replies (`error_rate`), only for authenticated requests;
//! - connection resets (`reset_rate`): the TCP connection is closed with a reset and no reply;
//! - hangs (`hang_rate`): the request is held for `hang`, then the connection is closed without
//!   a reply or the reply is sent, as `after_hang` selects;
//! - slow replies (`slow_rate`): the reply is sent `slow` later than usual;
//! - 429 storms (`storm`): periods in which every write, and optionally every key and URL
//!   purge, gets Fastly's hourly-limit 429.
//!
//! Resets, hangs and slow replies exclude each other, so their rates add up to at most 1.0.
//! A random 5xx or a storm 429 can follow a slow reply or a hang that ends in a reply.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use super::fault::random_server_error;
use super::reply::Reply;

/// Chaos settings. Every rate is a fraction of requests from 0.0 to 1.0, and
/// `Chaos::default()` turns every fault off.
///
/// In JSON (`POST /_sim/chaos`, `GET /_sim/chaos`) durations are whole milliseconds in fields
/// with an `_ms` suffix: `hang_ms`, `slow_ms`, and `start_after_ms`, `length_ms` and
/// `every_ms` in `storm`. Fields left out keep their default, which is off.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Chaos {
    /// Fraction of authenticated requests that get a random 500, 502 or 503 reply.
    pub error_rate: f64,
    /// Fraction of requests whose connection is reset (TCP RST) without any reply.
    pub reset_rate: f64,
    /// Fraction of requests held for [`Chaos::hang`] before the connection is closed or the
    /// reply is sent. Make `hang` longer than the client's request timeout to test timeouts.
    pub hang_rate: f64,
    /// How long a hanging request is held. Must be positive when `hang_rate` is.
    #[serde(rename = "hang_ms", with = "millis")]
    pub hang: Duration,
    /// Action at the end of a hang: close the connection, or send the reply.
    pub after_hang: AfterHang,
    /// Fraction of requests whose reply is delayed by [`Chaos::slow`].
    pub slow_rate: f64,
    /// Extra delay of a slow reply, on top of the simulator's latency. Must be positive when
    /// `slow_rate` is.
    #[serde(rename = "slow_ms", with = "millis")]
    pub slow: Duration,
    /// Periods in which writes, and optionally purges, get 429.
    pub storm: Option<Storm>,
    /// Seed of the random draws. With a seed, the same sequence of requests gets the same
    /// faults. Without one, the draws differ on every run.
    pub seed: Option<u64>,
}

/// Action at the end of a hang.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterHang {
    /// Close the connection (TCP FIN) without a reply. The request is not processed.
    #[default]
    Close,
    /// Send the reply. The request is processed, and recorded, before the hang starts, so a
    /// purge takes effect even when the client gave up waiting.
    Reply,
}

/// A 429 storm: from `start_after` on, `length` long, and again every `every` when set.
///
/// A write is a request other than GET and HEAD that is not a key or URL purge, so purge_all
/// is one. During a storm, every write gets Fastly's hourly-limit reply: 429 with
/// `Fastly-RateLimit-Remaining: 0` and `Fastly-RateLimit-Reset` at the end of the storm, in
/// Unix seconds rounded up. With `purges`, key and URL purges get it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storm {
    /// Time from when the chaos settings took effect (simulator start or
    /// [`super::Simulator::set_chaos`]) to the start of the first storm.
    #[serde(rename = "start_after_ms", with = "millis", default)]
    pub start_after: Duration,
    /// Length of each storm. Must be positive.
    #[serde(rename = "length_ms", with = "millis")]
    pub length: Duration,
    /// Time from the start of one storm to the start of the next, at least `length`. `None`
    /// means a single storm.
    #[serde(
        rename = "every_ms",
        with = "optional_millis",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub every: Option<Duration>,
    /// Whether key and URL purges get 429 too.
    #[serde(default)]
    pub purges: bool,
}

/// A fault that chaos mode applied to a request, as recorded in
/// [`super::RecordedRequest::chaos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChaosKind {
    /// A random 500, 502 or 503 reply.
    ServerError,
    /// The connection was reset without a reply.
    Reset,
    /// The request was held for the hang time.
    Hang,
    /// The reply was delayed by the slow time.
    Slow,
    /// A 429 reply during a storm.
    Storm,
}

/// Counters of the faults chaos mode applied, part of [`super::SimStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChaosStats {
    /// Random 500, 502 and 503 replies.
    pub server_errors: u64,
    /// Connections reset without a reply.
    pub resets: u64,
    /// Requests held for the hang time, whether they ended in a close or a reply.
    pub hangs: u64,
    /// Replies delayed by the slow time.
    pub slow_replies: u64,
    /// 429 replies sent during storms.
    pub storm_rejections: u64,
}

impl ChaosStats {
    pub(crate) fn count(&mut self, kind: ChaosKind) {
        let counter = match kind {
            ChaosKind::ServerError => &mut self.server_errors,
            ChaosKind::Reset => &mut self.resets,
            ChaosKind::Hang => &mut self.hangs,
            ChaosKind::Slow => &mut self.slow_replies,
            ChaosKind::Storm => &mut self.storm_rejections,
        };
        *counter += 1;
    }
}

/// Largest sum of the exclusive rates that still counts as 1.0, because sums such as
/// 0.1 + 0.2 + 0.7 exceed 1.0 in floating point.
const RATE_SUM_TOLERANCE: f64 = 1e-9;

impl Chaos {
    /// Checks the rates, durations and storm, and returns a message naming the invalid field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("reset_rate", self.reset_rate),
            ("hang_rate", self.hang_rate),
            ("slow_rate", self.slow_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "{name} {rate} is invalid: expected a fraction between 0.0 and 1.0"
                ));
            }
        }
        let exclusive = self.reset_rate + self.hang_rate + self.slow_rate;
        if exclusive > 1.0 + RATE_SUM_TOLERANCE {
            return Err(format!(
                "reset_rate + hang_rate + slow_rate is {exclusive}: expected at most 1.0, \
                 because a request gets at most one of these faults"
            ));
        }
        if self.hang_rate > 0.0 && self.hang.is_zero() {
            return Err(
                "hang_ms is 0 while hang_rate is set: give the time a hanging request \
                        is held, longer than the client's request timeout"
                    .to_string(),
            );
        }
        if self.slow_rate > 0.0 && self.slow.is_zero() {
            return Err(
                "slow_ms is 0 while slow_rate is set: give the extra delay of a slow \
                        reply"
                    .to_string(),
            );
        }
        if let Some(storm) = &self.storm {
            storm.validate()?;
        }
        Ok(())
    }

    /// Tells whether any fault is switched on.
    pub fn is_active(&self) -> bool {
        self.error_rate > 0.0
            || self.reset_rate > 0.0
            || self.hang_rate > 0.0
            || self.slow_rate > 0.0
            || self.storm.is_some()
    }
}

impl Storm {
    fn validate(&self) -> Result<(), String> {
        if self.length.as_millis() == 0 {
            return Err("storm length_ms is invalid: expected at least 1 ms".to_string());
        }
        if let Some(every) = self.every
            && every < self.length
        {
            return Err(format!(
                "storm every_ms {} is invalid: expected at least length_ms {}, because storms \
                 do not overlap",
                every.as_millis(),
                self.length.as_millis()
            ));
        }
        Ok(())
    }

    /// Returns the end, in Unix milliseconds, of the storm under way at `now_ms`, or `None`
    /// between storms. `origin_ms` is when the settings took effect.
    pub fn end_at(&self, origin_ms: u64, now_ms: u64) -> Option<u64> {
        let first_start = origin_ms.saturating_add(duration_ms(self.start_after));
        let since_first = now_ms.checked_sub(first_start)?;
        let start = match self.every {
            Some(every) => {
                let every_ms = duration_ms(every).max(1);
                first_start + since_first / every_ms * every_ms
            }
            None => first_start,
        };
        let end = start.saturating_add(duration_ms(self.length));
        (now_ms < end).then_some(end)
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A fault that changes how, or whether, the connection carries the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionFault {
    Reset,
    Hang { hold: Duration, then: AfterHang },
    Slow { delay: Duration },
}

/// The chaos settings in force, when they took effect, and the random source of the draws.
#[derive(Debug)]
pub struct ChaosDice {
    chaos: Chaos,
    /// When the settings took effect, in Unix milliseconds. Storms are timed from here.
    origin_ms: u64,
    rng: StdRng,
}

impl ChaosDice {
    pub fn new(chaos: Chaos, origin_ms: u64) -> Self {
        let rng = match chaos.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        Self {
            chaos,
            origin_ms,
            rng,
        }
    }

    pub fn chaos(&self) -> &Chaos {
        &self.chaos
    }

    /// Sets the 5xx rate, clamped to 0.0..=1.0 (NaN counts as 0.0), and keeps the other
    /// settings, the storm timing and the random sequence.
    pub fn set_error_rate(&mut self, rate: f64) {
        self.chaos.error_rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
    }

    /// Draws the connection fault of a request: a reset, a hang, a slow reply or none. Uses
    /// one random number when any of the three rates is set, and none otherwise.
    pub fn connection_fault(&mut self) -> Option<ConnectionFault> {
        let chaos = &self.chaos;
        if chaos.reset_rate <= 0.0 && chaos.hang_rate <= 0.0 && chaos.slow_rate <= 0.0 {
            return None;
        }
        let draw: f64 = self.rng.random();
        let chaos = &self.chaos;
        if draw < chaos.reset_rate {
            return Some(ConnectionFault::Reset);
        }
        if draw < chaos.reset_rate + chaos.hang_rate {
            return Some(ConnectionFault::Hang {
                hold: chaos.hang,
                then: chaos.after_hang,
            });
        }
        if draw < chaos.reset_rate + chaos.hang_rate + chaos.slow_rate {
            return Some(ConnectionFault::Slow { delay: chaos.slow });
        }
        None
    }

    /// Draws whether an authenticated request gets a random 5xx, and returns that reply.
    pub fn server_error(&mut self) -> Option<Reply> {
        let rate = self.chaos.error_rate;
        if rate <= 0.0 || !self.rng.random_bool(rate) {
            return None;
        }
        Some(random_server_error(&mut self.rng))
    }

    /// Returns the storm's 429 reply when a storm is under way at `now_ms` and covers the
    /// request: every write, and key and URL purges when the storm includes purges.
    pub fn storm_reply(&self, now_ms: u64, is_write: bool, is_purge: bool) -> Option<Reply> {
        let storm = self.chaos.storm.as_ref()?;
        let covered = is_write || (is_purge && storm.purges);
        if !covered {
            return None;
        }
        let end_ms = storm.end_at(self.origin_ms, now_ms)?;
        let reset = i64::try_from(end_ms.div_ceil(1000)).unwrap_or(i64::MAX);
        Some(Reply::rate_limited(reset))
    }
}

/// Serde helpers for a [`Duration`] written as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(super::duration_ms(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// Serde helpers for an optional [`Duration`] written as whole milliseconds or `null`.
mod optional_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => serializer.serialize_some(&super::duration_ms(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(deserializer).map(|millis| millis.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn storm(start_after: u64, length: u64, every: Option<u64>) -> Storm {
        Storm {
            start_after: ms(start_after),
            length: ms(length),
            every: every.map(ms),
            purges: false,
        }
    }

    #[test]
    fn single_storm_window() {
        let storm = storm(1000, 500, None);

        assert_eq!(storm.end_at(10_000, 10_999), None);
        assert_eq!(storm.end_at(10_000, 11_000), Some(11_500));
        assert_eq!(storm.end_at(10_000, 11_499), Some(11_500));
        assert_eq!(storm.end_at(10_000, 11_500), None);
        assert_eq!(storm.end_at(10_000, 50_000), None);
    }

    #[test]
    fn repeating_storm_windows() {
        let storm = storm(0, 100, Some(1000));

        assert_eq!(storm.end_at(0, 50), Some(100));
        assert_eq!(storm.end_at(0, 500), None);
        assert_eq!(storm.end_at(0, 2050), Some(2100));
        assert_eq!(storm.end_at(0, 2100), None);
    }

    #[test]
    fn storm_reply_covers_writes_and_optional_purges() {
        let mut chaos = Chaos {
            storm: Some(storm(0, 1500, None)),
            ..Chaos::default()
        };
        let dice = ChaosDice::new(chaos.clone(), 1_000_000);

        let write = dice
            .storm_reply(1_000_100, true, false)
            .expect("writes get 429");
        assert_eq!(write.status, 429);
        assert_eq!(write.headers["fastly-ratelimit-remaining"], "0");
        // The storm ends at 1,001,500 ms, and the reset is rounded up to whole seconds.
        assert_eq!(write.headers["fastly-ratelimit-reset"], "1002");
        assert!(dice.storm_reply(1_000_100, false, true).is_none());
        assert!(dice.storm_reply(1_000_100, false, false).is_none());

        chaos.storm.as_mut().unwrap().purges = true;
        let dice = ChaosDice::new(chaos, 1_000_000);
        assert!(dice.storm_reply(1_000_100, false, true).is_some());
        assert!(dice.storm_reply(1_000_100, false, false).is_none());
    }

    #[test]
    fn connection_faults_follow_rates() {
        let only = |chaos: Chaos| ChaosDice::new(chaos, 0).connection_fault();

        assert_eq!(only(Chaos::default()), None);
        assert_eq!(
            only(Chaos {
                reset_rate: 1.0,
                ..Chaos::default()
            }),
            Some(ConnectionFault::Reset)
        );
        assert_eq!(
            only(Chaos {
                hang_rate: 1.0,
                hang: ms(300),
                after_hang: AfterHang::Reply,
                ..Chaos::default()
            }),
            Some(ConnectionFault::Hang {
                hold: ms(300),
                then: AfterHang::Reply
            })
        );
        assert_eq!(
            only(Chaos {
                slow_rate: 1.0,
                slow: ms(20),
                ..Chaos::default()
            }),
            Some(ConnectionFault::Slow { delay: ms(20) })
        );
    }

    #[test]
    fn mixed_rates_give_every_kind() {
        let chaos = Chaos {
            reset_rate: 0.2,
            hang_rate: 0.2,
            hang: ms(10),
            slow_rate: 0.2,
            slow: ms(10),
            seed: Some(7),
            ..Chaos::default()
        };
        let mut dice = ChaosDice::new(chaos, 0);

        let mut counts = [0_u32; 4];
        for _ in 0..1000 {
            let index = match dice.connection_fault() {
                Some(ConnectionFault::Reset) => 0,
                Some(ConnectionFault::Hang { .. }) => 1,
                Some(ConnectionFault::Slow { .. }) => 2,
                None => 3,
            };
            counts[index] += 1;
        }

        // Expected about 200, 200, 200 and 400; the bounds are far from the mean.
        for (index, count) in counts.iter().enumerate() {
            assert!(*count > 120, "kind {index} drawn {count} times of 1000");
        }
        assert!(
            counts[3] > 300,
            "no fault drawn {} times of 1000",
            counts[3]
        );
    }

    #[test]
    fn seed_repeats_draws() {
        let chaos = Chaos {
            error_rate: 0.5,
            reset_rate: 0.5,
            seed: Some(42),
            ..Chaos::default()
        };
        let draws = || {
            let mut dice = ChaosDice::new(chaos.clone(), 0);
            (0..50)
                .map(|_| {
                    let fault = dice.connection_fault();
                    let status = dice.server_error().map(|reply| reply.status.as_u16());
                    (fault, status)
                })
                .collect::<Vec<_>>()
        };

        assert_eq!(draws(), draws());
    }

    #[test]
    fn validation_rejects_bad_settings() {
        let cases = [
            (
                Chaos {
                    error_rate: 1.5,
                    ..Chaos::default()
                },
                "error_rate",
            ),
            (
                Chaos {
                    reset_rate: f64::NAN,
                    ..Chaos::default()
                },
                "reset_rate",
            ),
            (
                Chaos {
                    reset_rate: 0.6,
                    slow_rate: 0.6,
                    slow: ms(1),
                    ..Chaos::default()
                },
                "at most 1.0",
            ),
            (
                Chaos {
                    hang_rate: 0.1,
                    ..Chaos::default()
                },
                "hang_ms",
            ),
            (
                Chaos {
                    slow_rate: 0.1,
                    ..Chaos::default()
                },
                "slow_ms",
            ),
            (
                Chaos {
                    storm: Some(storm(0, 0, None)),
                    ..Chaos::default()
                },
                "length_ms",
            ),
            (
                Chaos {
                    storm: Some(storm(0, 100, Some(50))),
                    ..Chaos::default()
                },
                "every_ms",
            ),
        ];

        for (chaos, field) in cases {
            let error = chaos.validate().expect_err(field);
            assert!(error.contains(field), "{error:?} names {field}");
        }
        let sum_of_one = Chaos {
            reset_rate: 0.1,
            hang_rate: 0.2,
            hang: ms(1),
            slow_rate: 0.7,
            slow: ms(1),
            ..Chaos::default()
        };
        assert_eq!(sum_of_one.validate(), Ok(()));
    }

    #[test]
    fn json_uses_millisecond_fields() {
        let chaos: Chaos = serde_json::from_value(json!({
            "reset_rate": 0.1,
            "hang_rate": 0.2,
            "hang_ms": 600,
            "after_hang": "reply",
            "storm": { "start_after_ms": 1000, "length_ms": 1500, "purges": true },
            "seed": 9
        }))
        .unwrap();

        assert_eq!(chaos.hang, ms(600));
        assert_eq!(chaos.after_hang, AfterHang::Reply);
        assert_eq!(chaos.slow, Duration::ZERO);
        assert_eq!(chaos.storm, {
            let mut expected = storm(1000, 1500, None);
            expected.purges = true;
            Some(expected)
        });
        let written = serde_json::to_value(&chaos).unwrap();
        assert_eq!(written["hang_ms"], 600);
        assert_eq!(written["storm"]["length_ms"], 1500);
        assert!(serde_json::from_value::<Chaos>(json!({ "hang": 5 })).is_err());
    }
}
