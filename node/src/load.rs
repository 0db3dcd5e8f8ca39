//! What each partition of a shard serves: its rate of operations and a
//! sample of the key hashes they touched, for splits for consumption
//! (docs/metadata.md, "Splits"). Sans-IO: the caller passes the time.
//!
//! Time is cut into one-second windows. The rate is the count of the last
//! whole window (0 once a window has passed with nothing). The sample is
//! a reservoir of at most [`SAMPLES_MAX`] hashes per window, and the split
//! point is the median of the last whole window's sample: the hash that
//! has as much of the traffic below it as above.

use std::collections::HashMap;

/// Hashes kept per window and partition.
pub const SAMPLES_MAX: usize = 256;
const WINDOW_NS: u64 = 1_000_000_000;

#[derive(Debug, Default)]
struct Window {
    start_ns: u64,
    count: u64,
    samples: Vec<u64>,
}

#[derive(Debug, Default)]
struct PartitionLoad {
    current: Window,
    previous: Option<Window>,
}

/// The load of every partition of a shard.
#[derive(Debug)]
pub struct LoadTracker {
    partitions: HashMap<u64, PartitionLoad>,
    /// Drives reservoir replacement (xorshift; no need for a real RNG).
    state: u64,
}

impl Default for LoadTracker {
    fn default() -> Self {
        LoadTracker {
            partitions: HashMap::new(),
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

/// A partition's load at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Operations in the last whole second.
    pub ops_per_s: u64,
    /// The median key hash of that second's sample; `None` without one.
    pub median: Option<u64>,
}

impl LoadTracker {
    /// Counts one operation on `partition` touching a key of hash `hash`.
    pub fn observe(&mut self, partition: u64, hash: u64, now_ns: u64) {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let draw = self.state;
        let load = self.partitions.entry(partition).or_default();
        load.roll(now_ns);
        let window = &mut load.current;
        window.count += 1;
        if window.samples.len() < SAMPLES_MAX {
            window.samples.push(hash);
        } else {
            // Reservoir sampling: the n-th hash replaces a random kept one
            // with probability SAMPLES_MAX / n.
            let slot = draw % window.count;
            if let Some(kept) = window.samples.get_mut(slot as usize) {
                *kept = hash;
            }
        }
    }

    /// `partition`'s load as of `now_ns`.
    pub fn load(&mut self, partition: u64, now_ns: u64) -> Load {
        let Some(load) = self.partitions.get_mut(&partition) else {
            return Load {
                ops_per_s: 0,
                median: None,
            };
        };
        load.roll(now_ns);
        let Some(previous) = &load.previous else {
            return Load {
                ops_per_s: 0,
                median: None,
            };
        };
        let mut sample = previous.samples.clone();
        sample.sort_unstable();
        Load {
            ops_per_s: previous.count,
            median: sample.get(sample.len() / 2).copied(),
        }
    }

    /// Forgets a partition (it was dropped).
    pub fn forget(&mut self, partition: u64) {
        self.partitions.remove(&partition);
    }
}

impl PartitionLoad {
    /// Moves to the window holding `now_ns`.
    fn roll(&mut self, now_ns: u64) {
        let start = now_ns - now_ns % WINDOW_NS;
        if start == self.current.start_ns {
            return;
        }
        let ended = std::mem::replace(
            &mut self.current,
            Window {
                start_ns: start,
                ..Window::default()
            },
        );
        // The window before this one, if it was the one that just ended;
        // else a whole second passed with nothing.
        self.previous = (ended.start_ns + WINDOW_NS == start).then_some(ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_last_whole_second_and_the_median_splits_the_traffic() {
        let mut tracker = LoadTracker::default();
        let second = WINDOW_NS;
        // Second 1: 4000 operations, three quarters of them on hashes
        // below 1000, the rest spread over the upper half of the space.
        for i in 0..4000u64 {
            let hash = if i % 4 != 0 {
                i % 1000
            } else {
                (1 << 63) + i * 1_000_003
            };
            tracker.observe(7, hash, second + i * 200_000);
        }
        // Nothing whole has passed yet.
        assert_eq!(tracker.load(7, second + 900_000_000).ops_per_s, 0);
        let load = tracker.load(7, 2 * second + 1);
        assert_eq!(load.ops_per_s, 4000);
        // Three quarters of the traffic is below 1000: so is its median,
        // far from the middle of the hash space.
        let median = load.median.unwrap();
        assert!(median < 1000, "{median}");
        // A quiet second after that: no rate, no split point.
        let quiet = tracker.load(7, 3 * second + 1);
        assert_eq!(
            quiet,
            Load {
                ops_per_s: 0,
                median: None
            }
        );
        assert_eq!(tracker.load(8, 3 * second).ops_per_s, 0);
    }

    #[test]
    fn the_sample_stays_bounded_and_represents_the_whole_window() {
        let mut tracker = LoadTracker::default();
        // 100 000 hashes rising through the window: a sample of only the
        // first ones would put the median low.
        for i in 0..100_000u64 {
            tracker.observe(1, i << 40, i * 5_000);
        }
        let partition = &tracker.partitions[&1];
        assert!(partition.current.samples.len() <= SAMPLES_MAX);
        let median = tracker.load(1, WINDOW_NS).median.unwrap() >> 40;
        assert!((30_000..70_000).contains(&median), "{median}");
    }
}
