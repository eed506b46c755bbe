//! `--transfer-interval`: how often a branch makes a transfer.

use rand::Rng;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `0s` (as fast as possible), a fixed `10ms`, or a uniform range `2s..5s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    FullSpeed,
    Every(Duration),
    Between(Duration, Duration),
}

impl Pace {
    /// The wait before the next transfer; `None` at full speed.
    pub fn next_wait(&self, rng: &mut impl Rng) -> Option<Duration> {
        match *self {
            Pace::FullSpeed => None,
            Pace::Every(d) => Some(d),
            Pace::Between(lo, hi) => Some(rng.gen_range(lo..=hi)),
        }
    }
}

impl FromStr for Pace {
    type Err = String;

    fn from_str(s: &str) -> Result<Pace, String> {
        let dur = |t: &str| {
            humantime::parse_duration(t.trim())
                .map_err(|e| format!("'{t}' is not a duration like 10ms or 2s ({e})"))
        };
        match s.split_once("..") {
            Some((lo, hi)) => {
                let (lo, hi) = (dur(lo)?, dur(hi)?);
                if lo > hi {
                    return Err(format!("range '{s}' runs backwards"));
                }
                if hi.is_zero() {
                    Ok(Pace::FullSpeed)
                } else {
                    Ok(Pace::Between(lo, hi))
                }
            }
            None => {
                let d = dur(s)?;
                Ok(if d.is_zero() {
                    Pace::FullSpeed
                } else {
                    Pace::Every(d)
                })
            }
        }
    }
}

impl fmt::Display for Pace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pace::FullSpeed => write!(f, "0s"),
            Pace::Every(d) => write!(f, "{}", humantime::format_duration(*d)),
            Pace::Between(a, b) => write!(
                f,
                "{}..{}",
                humantime::format_duration(*a),
                humantime::format_duration(*b)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("0s".parse(), Ok(Pace::FullSpeed));
        assert_eq!("10ms".parse(), Ok(Pace::Every(Duration::from_millis(10))));
        assert_eq!(
            "2s..5s".parse(),
            Ok(Pace::Between(
                Duration::from_secs(2),
                Duration::from_secs(5)
            ))
        );
        assert!("5s..2s".parse::<Pace>().is_err());
        assert!("fast".parse::<Pace>().is_err());
        assert!("1s..".parse::<Pace>().is_err());
        // Below the timer's resolution an interval is a rate, and survives start_bank's
        // forwarding (Display, then parse) exactly.
        let rate: Pace = "13333ns".parse().expect("ns");
        assert_eq!(rate, Pace::Every(Duration::from_nanos(13_333)));
        assert_eq!(rate.to_string().parse(), Ok(rate));
    }
}
