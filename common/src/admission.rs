//! Admission control's sans-IO core (docs/admission.md): capacity units,
//! token buckets, a partition's steady and burst buckets behind its node's,
//! and global admission control (GAC) — the service that keeps a table's
//! limit across many routers — as a server core and a router-side client
//! core. Nothing here reads a clock or does IO: time is passed in as
//! nanoseconds, so a seeded simulation drives it exactly.
//!
//! Units are counted in thousandths (milli-units), so an eventually
//! consistent read's half unit is exact and refill never drifts.

/// A read unit covers up to this many bytes.
pub const READ_UNIT_BYTES: usize = 4096;
/// A write unit covers up to this many bytes.
pub const WRITE_UNIT_BYTES: usize = 1024;
/// One capacity unit, in the milli-units buckets count.
pub const UNIT: u64 = 1000;
/// A partition keeps up to this much unused capacity for bursts.
pub const BURST_SECONDS: u64 = 300;
/// A partition serves at most this many units per second, whatever its
/// table's capacity (DynamoDB's per-partition limits).
pub const PARTITION_READ_UNITS_MAX: u64 = 3000;
pub const PARTITION_WRITE_UNITS_MAX: u64 = 1000;

const NANOS: u128 = 1_000_000_000;

/// What a read costs: one unit per started 4 KB, half for an eventually
/// consistent read; at least one (or a half).
pub fn read_cost(bytes: usize, consistent: bool) -> u64 {
    let units = bytes.div_ceil(READ_UNIT_BYTES).max(1) as u64 * UNIT;
    if consistent { units } else { units / 2 }
}

/// What a write costs: one unit per started 1 KB, at least one.
pub fn write_cost(bytes: usize) -> u64 {
    bytes.div_ceil(WRITE_UNIT_BYTES).max(1) as u64 * UNIT
}

/// A token bucket: `rate` milli-units per second, holding at most
/// `capacity`. Refill is exact: the fraction of a milli-unit earned so far
/// is carried, not rounded away.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    capacity: u64,
    tokens: u64,
    at_ns: u64,
    /// Earned but not yet whole milli-units, times 10^9.
    carry: u128,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u64, capacity: u64, now_ns: u64) -> TokenBucket {
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            at_ns: now_ns,
            carry: 0,
        }
    }

    /// An empty bucket.
    pub fn empty(rate: u64, capacity: u64, now_ns: u64) -> TokenBucket {
        TokenBucket {
            tokens: 0,
            ..TokenBucket::new(rate, capacity, now_ns)
        }
    }

    /// Adds what was earned since the last call; returns what did not fit
    /// (the overflow, which a burst bucket collects).
    pub fn refill(&mut self, now_ns: u64) -> u64 {
        let elapsed = u128::from(now_ns.saturating_sub(self.at_ns));
        self.at_ns = self.at_ns.max(now_ns);
        let earned = elapsed * u128::from(self.rate) + self.carry;
        self.carry = earned % NANOS;
        let earned = u64::try_from(earned / NANOS).unwrap_or(u64::MAX);
        let total = self.tokens.saturating_add(earned);
        self.tokens = total.min(self.capacity);
        total - self.tokens
    }

    pub fn available(&mut self, now_ns: u64) -> u64 {
        self.refill(now_ns);
        self.tokens
    }

    /// Takes `cost` if the bucket holds it.
    pub fn try_take(&mut self, cost: u64, now_ns: u64) -> bool {
        self.refill(now_ns);
        self.take_refilled(cost)
    }

    fn take_refilled(&mut self, cost: u64) -> bool {
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Adds tokens from elsewhere (a burst bucket's fill), up to capacity.
    pub fn deposit(&mut self, amount: u64) {
        self.tokens = self.tokens.saturating_add(amount).min(self.capacity);
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Changes the rate (and capacity) from `now_ns` on; tokens held stay,
    /// up to the new capacity.
    pub fn set_rate(&mut self, rate: u64, capacity: u64, now_ns: u64) {
        self.refill(now_ns);
        self.rate = rate;
        self.capacity = capacity;
        self.tokens = self.tokens.min(capacity);
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// The partition (steady and burst) has no capacity left.
    Partition,
    /// The node is at its limit.
    Node,
    /// The table's limit across routers (GAC) is used up.
    Table,
}

/// One partition's buckets: steady capacity (one second of its rate), and
/// a burst bucket holding up to [`BURST_SECONDS`] of capacity it left
/// unused.
#[derive(Debug, Clone)]
pub struct PartitionBuckets {
    steady: TokenBucket,
    burst: TokenBucket,
}

impl PartitionBuckets {
    /// A partition of `rate` milli-units per second, starting with a full
    /// second of capacity and nothing saved.
    pub fn new(rate: u64, now_ns: u64) -> PartitionBuckets {
        PartitionBuckets {
            steady: TokenBucket::new(rate, rate, now_ns),
            burst: TokenBucket::empty(0, rate.saturating_mul(BURST_SECONDS), now_ns),
        }
    }

    fn refill(&mut self, now_ns: u64) {
        let unused = self.steady.refill(now_ns);
        self.burst.deposit(unused);
    }

    /// Takes `cost` after the fact — what a request turned out to cost
    /// beyond what it was admitted with — from steady capacity, then from
    /// saved capacity, as far as they go (a bucket never goes below
    /// empty).
    pub fn charge(&mut self, cost: u64, now_ns: u64) {
        self.refill(now_ns);
        let from_steady = cost.min(self.steady.tokens);
        self.steady.tokens -= from_steady;
        let rest = cost - from_steady;
        self.burst.tokens -= rest.min(self.burst.tokens);
    }

    /// Saved burst capacity.
    pub fn burst_available(&mut self, now_ns: u64) -> u64 {
        self.refill(now_ns);
        self.burst.tokens
    }

    pub fn set_rate(&mut self, rate: u64, now_ns: u64) {
        self.refill(now_ns);
        self.steady.set_rate(rate, rate, now_ns);
        self.burst
            .set_rate(0, rate.saturating_mul(BURST_SECONDS), now_ns);
    }
}

/// A node's capacity, which every partition on it draws from too.
#[derive(Debug, Clone)]
pub struct NodeBuckets {
    bucket: TokenBucket,
}

/// A partition may burst only while its node keeps this share of a
/// second's capacity free after the request (in percent).
pub const NODE_HEADROOM_PERCENT: u64 = 20;

impl NodeBuckets {
    pub fn new(rate: u64, now_ns: u64) -> NodeBuckets {
        NodeBuckets {
            bucket: TokenBucket::new(rate, rate, now_ns),
        }
    }

    /// Whether the node could give `cost` and still keep its headroom.
    pub fn has_spare(&mut self, cost: u64, now_ns: u64) -> bool {
        let headroom = self.bucket.capacity() * NODE_HEADROOM_PERCENT / 100;
        self.bucket.available(now_ns) >= cost.saturating_add(headroom)
    }

    /// Draws `cost` for work the node must do whatever its capacity (a
    /// follower applying a chosen write): what it holds, down to empty.
    pub fn charge(&mut self, cost: u64, now_ns: u64) {
        let available = self.bucket.available(now_ns);
        self.bucket.take_refilled(cost.min(available));
    }

    /// Takes `cost` for a request no partition limit applies to (an
    /// on-demand table's), if the node holds it.
    pub fn take(&mut self, cost: u64, now_ns: u64) -> bool {
        self.bucket.try_take(cost, now_ns)
    }

    /// Admits one request of `cost` to `partition` on this node. Steady
    /// capacity first; beyond it, saved burst capacity, but only while
    /// this node — and, for a write, the nodes of the other replicas
    /// (`peers_spare`, from their heartbeats) — has spare capacity.
    pub fn admit(
        &mut self,
        partition: &mut PartitionBuckets,
        cost: u64,
        peers_spare: bool,
        now_ns: u64,
    ) -> Result<(), Throttled> {
        partition.refill(now_ns);
        if self.bucket.available(now_ns) < cost {
            return Err(Throttled::Node);
        }
        if partition.steady.take_refilled(cost) {
            self.bucket.take_refilled(cost);
            return Ok(());
        }
        if peers_spare && self.has_spare(cost, now_ns) && partition.burst.take_refilled(cost) {
            self.bucket.take_refilled(cost);
            return Ok(());
        }
        Err(Throttled::Partition)
    }
}

/// A new on-demand table may use this much from its first request
/// (DynamoDB's starting throughput for on-demand tables); from then on,
/// twice its highest observed rate.
pub const ON_DEMAND_READ_UNITS_START: u64 = 12_000;
pub const ON_DEMAND_WRITE_UNITS_START: u64 = 4_000;

/// GAC's server core: each bucket's limit — a table's reads, or its
/// writes — handed out to routers as tokens they spend locally. Tokens
/// come from one token bucket per limit, refilled at its rate and holding
/// one grant period's worth, so what all routers spend together never
/// exceeds the rate by more than a period's worth. A grant is capped at
/// the router's max-min fair share of a period's capacity, given what
/// every active router last asked for: a router that wants little gets
/// all of it, and the rest is shared evenly by the others.
///
/// A provisioned limit is set from the table's capacity; an on-demand one
/// follows traffic: it starts at a floor and is twice the highest rate
/// routers reported spending, so a table may double its previous peak at
/// once. A peak is remembered for [`PEAK_HOLD_NS`]; then the highest rate
/// seen since takes its place, so the limit comes down after traffic
/// does, one hold at a time.
#[derive(Debug, Clone)]
pub struct GacServer {
    period_ns: u64,
    peak_hold_ns: u64,
    buckets: std::collections::BTreeMap<u64, GacBucket>,
}

/// How long an on-demand limit remembers its peak (DynamoDB's 30 minutes).
pub const PEAK_HOLD_NS: u64 = 30 * 60 * NANOS as u64;

#[derive(Debug, Clone, Copy)]
struct Asked {
    at_ns: u64,
    wanted: u64,
    granted: u64,
}

#[derive(Debug, Clone)]
struct GacBucket {
    bucket: TokenBucket,
    /// Each router's last ask: when, what it wanted, what it was granted.
    routers: std::collections::BTreeMap<u64, Asked>,
    /// `Some(floor)` for an on-demand limit.
    on_demand: Option<u64>,
    /// Highest rate spent over a whole window (milli-units per second)…
    peak: u64,
    /// …since this time, and the highest rate since then below it, which
    /// replaces it when the hold runs out.
    peak_ns: u64,
    since_peak: u64,
    /// The current measuring window: its start and what was spent in it.
    window_ns: u64,
    window_spent: u64,
}

impl GacServer {
    /// Routers ask every `period_ns`.
    pub fn new(period_ns: u64) -> GacServer {
        GacServer {
            period_ns: period_ns.max(1),
            peak_hold_ns: PEAK_HOLD_NS,
            buckets: std::collections::BTreeMap::new(),
        }
    }

    /// Remembers on-demand peaks for `hold_ns` instead of [`PEAK_HOLD_NS`].
    pub fn with_peak_hold(mut self, hold_ns: u64) -> GacServer {
        self.peak_hold_ns = hold_ns;
        self
    }

    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// Sets a provisioned limit (milli-units per second).
    pub fn set_table(&mut self, bucket: u64, rate: u64, now_ns: u64) {
        self.set(bucket, rate, None, now_ns);
    }

    /// Makes a limit on demand, starting from `floor` milli-units per
    /// second (or twice the peak seen so far, if that is more).
    pub fn set_on_demand(&mut self, bucket: u64, floor: u64, now_ns: u64) {
        let peak = self.buckets.get(&bucket).map_or(0, |b| b.peak);
        self.set(
            bucket,
            floor.max(peak.saturating_mul(2)),
            Some(floor),
            now_ns,
        );
    }

    fn set(&mut self, bucket: u64, rate: u64, on_demand: Option<u64>, now_ns: u64) {
        let capacity = self.period_capacity(rate);
        match self.buckets.get_mut(&bucket) {
            Some(b) => {
                b.bucket.set_rate(rate, capacity, now_ns);
                b.on_demand = on_demand;
            }
            None => {
                self.buckets.insert(
                    bucket,
                    GacBucket {
                        bucket: TokenBucket::new(rate, capacity, now_ns),
                        routers: std::collections::BTreeMap::new(),
                        on_demand,
                        peak: 0,
                        peak_ns: now_ns,
                        since_peak: 0,
                        window_ns: now_ns,
                        window_spent: 0,
                    },
                );
            }
        }
    }

    fn period_capacity(&self, rate: u64) -> u64 {
        (u128::from(rate) * u128::from(self.period_ns) / NANOS) as u64
    }

    /// The limit's current rate (milli-units per second), if it is known.
    pub fn rate(&self, bucket: u64) -> Option<u64> {
        self.buckets.get(&bucket).map(|b| b.bucket.rate())
    }

    /// What a router spent of `bucket` since it last asked. Spending is
    /// measured over windows of at least two periods; an on-demand limit
    /// then moves to twice the highest rate measured.
    fn report(&mut self, bucket: u64, spent: u64, now_ns: u64) {
        let window = 2 * self.period_ns;
        let Some(b) = self.buckets.get_mut(&bucket) else {
            return;
        };
        b.window_spent = b.window_spent.saturating_add(spent);
        let elapsed = now_ns.saturating_sub(b.window_ns);
        if elapsed < window {
            return;
        }
        let rate = (u128::from(b.window_spent) * NANOS / u128::from(elapsed)) as u64;
        if rate >= b.peak {
            (b.peak, b.peak_ns, b.since_peak) = (rate, now_ns, 0);
        } else if now_ns.saturating_sub(b.peak_ns) >= self.peak_hold_ns {
            // The hold ran out: the highest rate since the peak (or this
            // one) is the peak now, held from now.
            (b.peak, b.peak_ns, b.since_peak) = (b.since_peak.max(rate), now_ns, 0);
        } else {
            b.since_peak = b.since_peak.max(rate);
        }
        b.window_ns = now_ns;
        b.window_spent = 0;
        if let Some(floor) = b.on_demand {
            let rate = floor.max(b.peak.saturating_mul(2));
            if rate != b.bucket.rate() {
                // A higher limit applies at once: the period's extra
                // capacity is there now, not earned over the next period.
                // (A lower one holds no more than a period of it.)
                let capacity = (u128::from(rate) * u128::from(self.period_ns) / NANOS) as u64;
                let grown = capacity.saturating_sub(b.bucket.capacity());
                b.bucket.set_rate(rate, capacity, now_ns);
                b.bucket.deposit(grown);
            }
        }
    }

    /// A router asks for `wanted` milli-units of `bucket` for the next
    /// period, having `spent` since its last ask; returns what it is
    /// granted (0 for an unknown limit). A new grant replaces the
    /// router's last one, so what it left unspent of that goes back into
    /// the bucket: asking for too much wastes nothing.
    pub fn grant(&mut self, bucket: u64, router: u64, wanted: u64, spent: u64, now_ns: u64) -> u64 {
        self.report(bucket, spent, now_ns);
        let period = self.period_ns;
        let Some(b) = self.buckets.get_mut(&bucket) else {
            return 0;
        };
        let last = b.routers.get(&router).copied();
        if let Some(last) = last
            && now_ns.saturating_sub(last.at_ns) <= 2 * period
        {
            // A grant that lapsed (older than two periods) is not returned.
            b.bucket.refill(now_ns);
            b.bucket.deposit(last.granted.saturating_sub(spent));
        }
        b.routers.insert(
            router,
            Asked {
                at_ns: now_ns,
                wanted,
                granted: 0,
            },
        );
        // Routers that asked within the last two periods share the limit.
        b.routers
            .retain(|_, asked| now_ns.saturating_sub(asked.at_ns) <= 2 * period);
        let mut wants: Vec<u64> = b.routers.values().map(|a| a.wanted).collect();
        let share = fair_share(&mut wants, b.bucket.capacity());
        let granted = wanted.min(share).min(b.bucket.available(now_ns));
        b.bucket.take_refilled(granted);
        if let Some(asked) = b.routers.get_mut(&router) {
            asked.granted = granted;
        }
        granted
    }
}

/// The max-min fair level for `wants` sharing `capacity`: every want at
/// or below it is met in full, every larger one gets exactly it.
fn fair_share(wants: &mut [u64], capacity: u64) -> u64 {
    wants.sort_unstable();
    let mut left = capacity;
    for (at, want) in wants.iter().enumerate() {
        let even = left / (wants.len() - at) as u64;
        if *want > even {
            return even;
        }
        left -= want;
    }
    u64::MAX
}

/// A router's side of GAC for one limit: tokens granted for a period,
/// spent locally, and expiring so a router that lost GAC cannot spend old
/// grants forever.
#[derive(Debug, Clone, Default)]
pub struct GacTokens {
    tokens: u64,
    expires_ns: u64,
    /// The last grant GAC made, renewed while GAC cannot be reached.
    last_grant: Option<u64>,
    /// Spent since the last request: what to ask for next.
    spent: u64,
    /// Refused for want of tokens since the last request.
    refused: u64,
    /// When the last request was made.
    asked_ns: u64,
}

impl GacTokens {
    pub fn new() -> GacTokens {
        GacTokens::default()
    }

    /// Whether GAC ever granted this router anything here.
    pub fn has_grant(&self) -> bool {
        self.last_grant.is_some()
    }

    /// The last grant GAC made, if any.
    pub fn last_grant(&self) -> Option<u64> {
        self.last_grant
    }

    /// Whether a grant holds at `now_ns` (it may be spent).
    pub fn is_current(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }

    /// Spends `cost` if the current grant covers it.
    pub fn try_spend(&mut self, cost: u64, now_ns: u64) -> bool {
        if now_ns >= self.expires_ns {
            self.tokens = 0;
        }
        if self.tokens >= cost {
            self.tokens -= cost;
            self.spent += cost;
            true
        } else {
            self.refused += cost;
            false
        }
    }

    /// Spends `cost` after the fact (what a read turned out to cost beyond
    /// what it was admitted with), as far as the grant goes.
    pub fn charge(&mut self, cost: u64) {
        self.tokens = self.tokens.saturating_sub(cost);
        self.spent += cost;
    }

    /// What was spent since the last ask (reported to GAC with it).
    pub fn spent(&self) -> u64 {
        self.spent
    }

    /// What to ask GAC for, for the next period of `period_ns`: what this
    /// router spent and was refused since its last ask, scaled from the
    /// time since then to a period (at least a sixteenth of one, so an
    /// ask right after another does not magnify noise), plus a quarter
    /// for growth; and the counters restart.
    pub fn wanted(&mut self, now_ns: u64, period_ns: u64) -> u64 {
        let elapsed = now_ns
            .saturating_sub(self.asked_ns)
            .max(period_ns / 16)
            .max(1);
        self.asked_ns = now_ns;
        let seen = u128::from(self.spent + self.refused);
        let demand =
            u64::try_from(seen * u128::from(period_ns) / u128::from(elapsed)).unwrap_or(u64::MAX);
        self.spent = 0;
        self.refused = 0;
        demand.saturating_add(demand / 4).saturating_add(UNIT)
    }

    /// A grant for the period ending at `expires_ns`; it replaces what is
    /// left of the last one.
    pub fn granted(&mut self, tokens: u64, expires_ns: u64) {
        self.tokens = tokens;
        self.expires_ns = expires_ns;
        self.last_grant = Some(tokens);
    }

    /// GAC could not be reached: the last grant again, until
    /// `expires_ns`. The caller bounds how long it keeps doing this.
    pub fn renew(&mut self, expires_ns: u64) {
        if let Some(last) = self.last_grant {
            self.tokens = last;
            self.expires_ns = expires_ns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn costs_follow_dynamodb_units() {
        assert_eq!(read_cost(1, true), UNIT);
        assert_eq!(read_cost(4096, true), UNIT);
        assert_eq!(read_cost(4097, true), 2 * UNIT);
        assert_eq!(read_cost(100, false), UNIT / 2);
        assert_eq!(write_cost(0), UNIT);
        assert_eq!(write_cost(1024), UNIT);
        assert_eq!(write_cost(1025), 2 * UNIT);
    }

    #[test]
    fn refill_is_exact_over_many_small_steps() {
        // 1/3 milli-unit per microsecond step: nothing may be lost.
        let mut bucket = TokenBucket::empty(333, u64::MAX, 0);
        for step in 1..=1_000_000u64 {
            bucket.refill(step * 1000);
        }
        // One second at 333 milli-units per second.
        assert_eq!(bucket.available(SECOND), 333);
    }

    /// A partition idle for 10 s saves 10 s of capacity; a spike of that
    /// plus one second's steady capacity is absorbed, and not one request
    /// more.
    #[test]
    fn a_burst_absorbs_what_was_saved_and_no_more() {
        let rate = 100 * UNIT;
        let mut node = NodeBuckets::new(100_000 * UNIT, 0);
        for spike in [1100u64, 1200] {
            let mut partition = PartitionBuckets::new(rate, 0);
            let now = 10 * SECOND;
            assert_eq!(partition.burst_available(now), 1000 * UNIT);
            let admitted = (0..spike)
                .filter(|_| node.admit(&mut partition, UNIT, true, now).is_ok())
                .count() as u64;
            assert_eq!(admitted, 1100, "spike of {spike}");
        }
    }

    #[test]
    fn saved_capacity_is_bounded_to_300_seconds() {
        let mut partition = PartitionBuckets::new(10 * UNIT, 0);
        assert_eq!(
            partition.burst_available(3600 * SECOND),
            10 * UNIT * BURST_SECONDS
        );
    }

    /// A partition may burst only while its node has room to spare (and,
    /// for a write, its peers): a node near its limit keeps partitions to
    /// their steady rate.
    #[test]
    fn bursting_needs_spare_capacity_on_the_node_and_its_peers() {
        let now = 100 * SECOND;
        let mut busy = NodeBuckets::new(1000 * UNIT, now);
        let mut partition = PartitionBuckets::new(100 * UNIT, 0);
        // Another partition took 90 % of the node's second.
        let mut other = PartitionBuckets::new(1000 * UNIT, now);
        for _ in 0..900 {
            busy.admit(&mut other, UNIT, true, now).unwrap();
        }
        let admitted = (0..500)
            .filter(|_| busy.admit(&mut partition, UNIT, true, now).is_ok())
            .count();
        assert_eq!(admitted, 100, "steady only: the node had no headroom");
        let mut idle = NodeBuckets::new(100_000 * UNIT, now);
        let mut partition = PartitionBuckets::new(100 * UNIT, 0);
        let refused_by_peers = (0..500)
            .filter(|_| idle.admit(&mut partition, UNIT, false, now).is_ok())
            .count();
        assert_eq!(refused_by_peers, 100, "steady only: the peers were busy");
        assert_eq!(
            busy.admit(&mut partition, 1000 * UNIT, true, now),
            Err(Throttled::Node)
        );
    }

    /// Four routers with uneven, changing demand well above the table's
    /// limit: what they admit together over a minute stays within 5 % of
    /// the limit, and none of them starves.
    #[test]
    fn a_tables_limit_holds_across_four_routers() {
        let limit = 1000 * UNIT;
        let period = SECOND;
        let mut gac = GacServer::new(period);
        gac.set_table(7, limit, 0);
        let mut routers: Vec<GacTokens> = (0..4).map(|_| GacTokens::new()).collect();
        let mut admitted = [0u64; 4];
        // Offered requests per millisecond per router (units of 1 each):
        // 0.3, 0.6, 0.9 and 1.2 per ms, i.e. 3000/s together.
        let offered = [3u64, 6, 9, 12];
        let step = SECOND / 1000;
        let end = 60 * SECOND;
        let mut now = 0;
        let mut next_ask = [0u64; 4];
        while now < end {
            for (r, tokens) in routers.iter_mut().enumerate() {
                if now >= next_ask[r] {
                    // Routers ask at staggered moments.
                    let spent = tokens.spent();
                    let wanted = tokens.wanted(now, period);
                    let grant = gac.grant(7, r as u64, wanted, spent, now);
                    tokens.granted(grant, now + period);
                    next_ask[r] = now + period;
                }
                let tick = now / step;
                let requests = offered[r] / 10 + u64::from(tick % 10 < offered[r] % 10);
                for _ in 0..requests {
                    if tokens.try_spend(UNIT, now) {
                        admitted[r] += 1;
                    }
                }
            }
            now += step;
        }
        let total: u64 = admitted.iter().sum();
        let expected = 60_000u64;
        let error = (total as f64 - expected as f64).abs() / expected as f64;
        assert!(
            error <= 0.05,
            "admitted {total} of {expected}: {admitted:?}"
        );
        for (r, count) in admitted.iter().enumerate() {
            assert!(*count >= 60 * 100, "router {r} starved: {admitted:?}");
        }
    }

    /// A router that wants little gets what it wants; the others share
    /// the rest evenly.
    #[test]
    fn grants_are_max_min_fair() {
        let mut wants = [100, 1000, 1000, 1000];
        assert_eq!(fair_share(&mut wants, 1000), 300);
        assert_eq!(fair_share(&mut [100, 200], 1000), u64::MAX);
        assert_eq!(fair_share(&mut [600, 600], 1000), 500);
        let mut gac = GacServer::new(SECOND);
        gac.set_table(1, 1000 * UNIT, 0);
        assert_eq!(gac.grant(1, 0, 100 * UNIT, 0, 0), 100 * UNIT);
        assert_eq!(gac.grant(1, 1, 2000 * UNIT, 0, 0), 900 * UNIT);
        assert_eq!(gac.grant(2, 1, 2000 * UNIT, 0, 0), 0, "unknown table");
    }

    /// Grants expire: a router cut off from GAC stops spending at the end
    /// of its period.
    #[test]
    fn grants_expire_without_gac() {
        let mut tokens = GacTokens::new();
        tokens.granted(10 * UNIT, SECOND);
        assert!(tokens.try_spend(UNIT, SECOND / 2));
        assert!(!tokens.try_spend(UNIT, SECOND));
        assert_eq!(
            tokens.wanted(SECOND, SECOND),
            2 * UNIT + 2 * UNIT / 4 + UNIT
        );
        // Asked again after a quarter period: the same spending is a rate
        // four times as high.
        assert!(tokens.try_spend(0, SECOND));
        tokens.granted(10 * UNIT, 2 * SECOND);
        assert!(tokens.try_spend(UNIT, SECOND + 1));
        assert_eq!(
            tokens.wanted(SECOND + SECOND / 4, SECOND),
            4 * UNIT + UNIT + UNIT
        );
    }

    /// A router cut off from GAC may renew its last grant (the caller
    /// bounds for how long); a router never granted anything has nothing
    /// to renew.
    #[test]
    fn a_renewed_grant_is_the_last_one_again() {
        let mut fresh = GacTokens::new();
        fresh.renew(SECOND);
        assert!(!fresh.has_grant());
        assert!(!fresh.try_spend(1, 0));
        let mut tokens = GacTokens::new();
        tokens.granted(3 * UNIT, SECOND);
        tokens.charge(2 * UNIT);
        assert!(tokens.try_spend(UNIT, 0));
        assert!(
            !tokens.try_spend(UNIT, 0),
            "the charge came out of the grant"
        );
        assert_eq!(tokens.spent(), 3 * UNIT);
        tokens.renew(2 * SECOND);
        assert!(tokens.try_spend(3 * UNIT, SECOND));
        assert!(!tokens.try_spend(1, 2 * SECOND), "the renewal expired too");
    }

    /// An on-demand limit starts at its floor and then follows traffic:
    /// twice the highest rate spent, at once, and never less than the
    /// floor.
    #[test]
    fn on_demand_capacity_doubles_the_previous_peak() {
        let period = SECOND;
        let floor = 100 * UNIT;
        let mut gac = GacServer::new(period);
        gac.set_on_demand(1, floor, 0);
        assert_eq!(gac.rate(1), Some(floor));
        // One router wanting far more than the floor gets a period of it,
        // and spends it all, every period: 100 units per second.
        let want = 1000 * UNIT;
        assert_eq!(gac.grant(1, 0, want, 0, 0), floor);
        assert_eq!(gac.grant(1, 0, want, floor, period), floor);
        // Two periods measured: twice the peak, at once.
        assert_eq!(gac.grant(1, 0, want, floor, 2 * period), 2 * floor);
        assert_eq!(gac.rate(1), Some(2 * floor));
        // It spends the new rate: the limit doubles again.
        gac.grant(1, 0, want, 2 * floor, 3 * period);
        gac.grant(1, 0, want, 2 * floor, 4 * period);
        assert_eq!(gac.rate(1), Some(4 * floor));
        // Traffic stops: the limit stays at twice the peak seen.
        for p in 5..15 {
            gac.grant(1, 0, UNIT, 0, p * period);
        }
        assert_eq!(gac.rate(1), Some(4 * floor));
        // A provisioned limit does not follow traffic.
        gac.set_table(2, floor, 0);
        for p in 0..4 {
            gac.grant(2, 0, want, 5 * floor, p * period);
        }
        assert_eq!(gac.rate(2), Some(floor));
    }

    /// An on-demand limit keeps its peak for the hold, then steps down to
    /// twice the highest rate seen since (never below the floor).
    #[test]
    fn on_demand_capacity_comes_down_after_the_peak_hold() {
        let period = SECOND;
        let floor = 100 * UNIT;
        let mut gac = GacServer::new(period).with_peak_hold(10 * period);
        gac.set_on_demand(1, floor, 0);
        let want = 1000 * UNIT;
        let spend = |gac: &mut GacServer, units: u64, periods: std::ops::RangeInclusive<u64>| {
            for p in periods {
                gac.grant(1, 0, want, units * UNIT, p * period);
            }
        };
        spend(&mut gac, 0, 0..=0);
        spend(&mut gac, 150, 1..=4);
        assert_eq!(gac.rate(1), Some(300 * UNIT), "twice the peak of 150/s");
        // Traffic falls to 60 units a second: the peak (measured at 4 s)
        // holds for 10 s…
        spend(&mut gac, 60, 5..=12);
        assert_eq!(gac.rate(1), Some(300 * UNIT));
        // …then twice the highest rate since is the limit.
        spend(&mut gac, 60, 13..=14);
        assert_eq!(gac.rate(1), Some(120 * UNIT));
        // Quiet: after another hold, the floor.
        spend(&mut gac, 0, 15..=22);
        assert_eq!(gac.rate(1), Some(120 * UNIT));
        spend(&mut gac, 0, 23..=24);
        assert_eq!(gac.rate(1), Some(floor));
        // A new peak raises it at once again.
        spend(&mut gac, 90, 25..=26);
        assert_eq!(gac.rate(1), Some(180 * UNIT));
    }

    /// What a router leaves of a grant goes back to GAC with its next ask,
    /// so an ask far above what it spends takes nothing from the others.
    #[test]
    fn unspent_grants_return_to_the_bucket() {
        let mut gac = GacServer::new(SECOND);
        gac.set_table(1, 1000 * UNIT, 0);
        // Router 0 asks for everything and spends a tenth of it.
        assert_eq!(gac.grant(1, 0, 1000 * UNIT, 0, 0), 1000 * UNIT);
        let later = SECOND / 10;
        assert_eq!(gac.grant(1, 0, 100 * UNIT, 100 * UNIT, later), 100 * UNIT);
        // What it left (900) plus a tenth of a second's refill (100), less
        // its new grant (100): 900 for router 1.
        assert_eq!(gac.grant(1, 1, 2000 * UNIT, 0, later), 900 * UNIT);
    }
}
