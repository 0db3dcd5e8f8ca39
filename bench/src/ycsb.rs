//! The YCSB core workloads as YCSB defines them: operation mixes A–F, key
//! choosers (zipfian with constant 0.99, scrambled zipfian, skewed latest,
//! uniform), hashed insert order, ten 100-byte fields per record, updates
//! of one field, and scan lengths uniform up to a maximum.
//!
//! This module is pure: it draws from an RNG it is given and does no IO.

use rand::Rng;
use rand::rngs::StdRng;

/// YCSB's zipfian constant.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;
/// Fields per record and bytes per field (YCSB defaults).
pub const FIELD_COUNT: usize = 10;
pub const FIELD_BYTES: usize = 100;
/// YCSB scrambles a zipfian drawn over this many items.
const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;
/// zeta(10^10, 0.99), the constant YCSB precomputes for scrambled zipfian.
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

/// One of YCSB's core workloads, or `W`: updates only (YCSB's
/// `updateproportion=1`), for measuring durable write throughput.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadName {
    A,
    B,
    C,
    D,
    E,
    F,
    W,
}

/// The operations a workload issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    Read,
    Update,
    Insert,
    Scan,
    ReadModifyWrite,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::Read,
        Operation::Update,
        Operation::Insert,
        Operation::Scan,
        Operation::ReadModifyWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Update => "update",
            Operation::Insert => "insert",
            Operation::Scan => "scan",
            Operation::ReadModifyWrite => "read_modify_write",
        }
    }
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// Scrambled zipfian over the loaded keys.
    Zipfian,
    /// Skewed towards the most recently inserted keys.
    Latest,
    Uniform,
}

/// An operation mix and key distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub name: WorkloadName,
    /// (operation, proportion) pairs summing to 1.
    pub mix: Vec<(Operation, f64)>,
    pub distribution: Distribution,
    pub scan_length_max: u64,
}

impl Workload {
    pub fn new(name: WorkloadName) -> Workload {
        use Operation::*;
        let (mix, distribution) = match name {
            WorkloadName::A => (vec![(Read, 0.5), (Update, 0.5)], Distribution::Zipfian),
            WorkloadName::B => (vec![(Read, 0.95), (Update, 0.05)], Distribution::Zipfian),
            WorkloadName::C => (vec![(Read, 1.0)], Distribution::Zipfian),
            WorkloadName::D => (vec![(Read, 0.95), (Insert, 0.05)], Distribution::Latest),
            WorkloadName::E => (vec![(Scan, 0.95), (Insert, 0.05)], Distribution::Zipfian),
            WorkloadName::F => (
                vec![(Read, 0.5), (ReadModifyWrite, 0.5)],
                Distribution::Zipfian,
            ),
            WorkloadName::W => (vec![(Update, 1.0)], Distribution::Zipfian),
        };
        Workload {
            name,
            mix,
            distribution,
            scan_length_max: 100,
        }
    }

    pub fn choose_operation(&self, rng: &mut StdRng) -> Operation {
        let mut draw: f64 = rng.random();
        for (operation, share) in &self.mix {
            if draw < *share {
                return *operation;
            }
            draw -= share;
        }
        self.mix[self.mix.len() - 1].0
    }

    /// Scan length, uniform in 1..=max as YCSB's default.
    pub fn scan_length(&self, rng: &mut StdRng) -> u64 {
        rng.random_range(1..=self.scan_length_max)
    }
}

/// YCSB's 64-bit FNV-1 hash of a key number (byte by byte, low first).
pub fn fnv_hash64(value: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 1_099_511_628_211;
    let mut hash = OFFSET_BASIS;
    let mut rest = value;
    for _ in 0..8 {
        hash ^= rest & 0xFF;
        hash = hash.wrapping_mul(PRIME);
        rest >>= 8;
    }
    hash
}

/// The record key of key number `n`: hashed, so inserts are not ordered.
pub fn key_name(n: u64) -> String {
    format!("user{}", fnv_hash64(n))
}

/// Zipfian over `[0, items)` by Gray et al.'s method, as YCSB draws it.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

fn zeta(from: u64, to: u64, theta: f64, initial: f64) -> f64 {
    (from..to).fold(initial, |sum, i| sum + 1.0 / ((i + 1) as f64).powf(theta))
}

impl Zipfian {
    pub fn new(items: u64, theta: f64) -> Zipfian {
        Self::with_zetan(items, theta, zeta(0, items, theta, 0.0))
    }

    fn with_zetan(items: u64, theta: f64, zetan: f64) -> Zipfian {
        let zeta2theta = zeta(0, 2, theta, 0.0);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2theta / zetan);
        Zipfian {
            items,
            theta,
            alpha,
            zetan,
            eta,
        }
    }

    /// Grows the item count, extending zeta incrementally (for "latest").
    pub fn grow_to(&mut self, items: u64) {
        if items > self.items {
            let zetan = zeta(self.items, items, self.theta, self.zetan);
            *self = Self::with_zetan(items, self.theta, zetan);
        }
    }

    pub fn next(&self, rng: &mut StdRng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let value = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        value.min(self.items - 1)
    }
}

/// Chooses key numbers for reads, updates and scans.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    ScrambledZipfian { records: u64, zipfian: Zipfian },
    Latest { zipfian: Zipfian },
    Uniform,
}

impl KeyChooser {
    pub fn new(distribution: Distribution, records: u64) -> KeyChooser {
        match distribution {
            Distribution::Zipfian => KeyChooser::ScrambledZipfian {
                records,
                zipfian: Zipfian::with_zetan(
                    SCRAMBLED_ITEM_COUNT,
                    ZIPFIAN_CONSTANT,
                    SCRAMBLED_ZETAN,
                ),
            },
            Distribution::Latest => KeyChooser::Latest {
                zipfian: Zipfian::new(records.max(2), ZIPFIAN_CONSTANT),
            },
            Distribution::Uniform => KeyChooser::Uniform,
        }
    }

    /// A key number among the `inserted` keys that exist now.
    pub fn next(&mut self, rng: &mut StdRng, inserted: u64) -> u64 {
        match self {
            KeyChooser::ScrambledZipfian { records, zipfian } => {
                fnv_hash64(zipfian.next(rng)) % *records
            }
            KeyChooser::Latest { zipfian } => {
                zipfian.grow_to(inserted.max(2));
                let back = zipfian.next(rng);
                inserted.saturating_sub(1).saturating_sub(back)
            }
            KeyChooser::Uniform => rng.random_range(0..inserted.max(1)),
        }
    }
}

/// A field value: `FIELD_BYTES` printable random characters.
pub fn field_value(rng: &mut StdRng) -> String {
    (0..FIELD_BYTES)
        .map(|_| char::from(rng.random_range(b' '..=b'~')))
        .collect()
}

pub fn field_name(index: usize) -> String {
    format!("field{index}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mixes_follow_their_proportions() {
        let mut rng = StdRng::seed_from_u64(3);
        let workload = Workload::new(WorkloadName::B);
        let reads = (0..100_000)
            .filter(|_| workload.choose_operation(&mut rng) == Operation::Read)
            .count();
        assert!((94_000..96_000).contains(&reads), "{reads} reads of 100000");
        let e = Workload::new(WorkloadName::E);
        let lengths: Vec<u64> = (0..10_000).map(|_| e.scan_length(&mut rng)).collect();
        assert!(lengths.iter().all(|l| (1..=100).contains(l)));
    }

    #[test]
    fn zipfian_is_skewed_towards_small_numbers() {
        let mut rng = StdRng::seed_from_u64(4);
        let zipfian = Zipfian::new(1000, ZIPFIAN_CONSTANT);
        let draws: Vec<u64> = (0..100_000).map(|_| zipfian.next(&mut rng)).collect();
        assert!(draws.iter().all(|d| *d < 1000));
        let zeros = draws.iter().filter(|d| **d == 0).count();
        let tail = draws.iter().filter(|d| **d >= 500).count();
        // With theta 0.99 item 0 gets about 1/zeta(1000) ≈ 13% of draws.
        assert!((11_000..15_000).contains(&zeros), "{zeros}");
        assert!(tail < zeros, "tail {tail} vs head {zeros}");
    }

    #[test]
    fn scrambled_zipfian_stays_in_range_and_spreads_hot_keys() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut chooser = KeyChooser::new(Distribution::Zipfian, 10_000);
        let draws: Vec<u64> = (0..50_000)
            .map(|_| chooser.next(&mut rng, 10_000))
            .collect();
        assert!(draws.iter().all(|d| *d < 10_000));
        let mut counts = std::collections::HashMap::new();
        for d in &draws {
            *counts.entry(*d).or_insert(0) += 1;
        }
        let hottest = counts
            .iter()
            .max_by_key(|(_, c)| **c)
            .map(|(k, _)| *k)
            .unwrap();
        assert_ne!(hottest, 0, "scrambling moves the hottest key away from 0");
    }

    #[test]
    fn latest_prefers_recent_inserts() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut chooser = KeyChooser::new(Distribution::Latest, 1000);
        let draws: Vec<u64> = (0..10_000).map(|_| chooser.next(&mut rng, 2000)).collect();
        assert!(draws.iter().all(|d| *d < 2000));
        let recent = draws.iter().filter(|d| **d >= 1900).count();
        assert!(recent > 5000, "{recent} of 10000 among the newest 100");
    }

    #[test]
    fn keys_are_hashed_and_distinct() {
        let keys: std::collections::HashSet<String> = (0..10_000).map(key_name).collect();
        assert_eq!(keys.len(), 10_000);
        assert!(
            key_name(1) > key_name(2) || key_name(2) > key_name(3),
            "hashing breaks numeric order"
        );
    }
}
