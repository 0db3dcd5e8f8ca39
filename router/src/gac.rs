//! A router core's side of global admission control (docs/admission.md):
//! tokens per table for reads and writes, granted by a GAC process for a
//! period at a time and spent here without asking per request.
//!
//! Each core asks for itself (it is one "router" to GAC): every period it
//! sends one request per GAC process with the tables it served since the
//! last one, what it spent of each and what it wants next. A table's
//! home GAC is `table id mod processes`; when it does not answer, the
//! others are tried in turn. While none answers, the core renews its last
//! grants for up to [`GRACE`], so a GAC restart drops no traffic; past
//! that, or if GAC never answered, it stops gating the table here and the
//! nodes' even per-partition shares of the table's capacity hold its
//! limit on their own.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_common::admission::{
    GacTokens, ON_DEMAND_READ_UNITS_START, ON_DEMAND_WRITE_UNITS_START, UNIT,
};
use cairn_common::group::NodeLinks;
use cairn_common::wire::{self, Capacity, GacAsk, GacRequest, GacResponse};

use crate::catalog::Table;

/// A core renews its last grants for this long while no GAC answers.
pub const GRACE: Duration = Duration::from_secs(30);
/// A request waits this long for a table's first grant (or the first after
/// it went idle) before going ungated.
const FIRST_GRANT_WAIT: Duration = Duration::from_millis(250);
/// How long one GAC process has to answer.
const GAC_TIMEOUT: Duration = Duration::from_millis(300);
/// Asks until GAC's first answer names its period.
const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
/// A table not served for this many rounds is forgotten.
const IDLE_ROUNDS_MAX: u32 = 8;

/// What GAC says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Within the table's grant here.
    Admitted,
    /// The grant is spent: throttle.
    Throttled,
    /// GAC is not gating this table here (none configured, or none
    /// reachable for longer than the grace): nodes' shares alone hold.
    Ungated,
}

/// One table's limits as this core holds them (index 0 reads, 1 writes).
#[derive(Debug)]
struct Limits {
    version: u64,
    units: [u32; 2],
    tokens: [GacTokens; 2],
    /// Served since the last ask.
    used: [bool; 2],
    /// GAC granted clearly less than this core asked: the table is
    /// contended, and a spent grant means throttle. Otherwise a spent
    /// grant means this core asked too little, and it asks for more at
    /// once.
    cut: [bool; 2],
    /// A request found the grant spent and waits for a top-up.
    topup: [bool; 2],
    /// Rounds in a row without a request.
    idle_rounds: u32,
    /// Since when no GAC answered for this table (core clock, ns).
    unreachable_since: Option<u64>,
}

impl Limits {
    fn new(table: &Table) -> Limits {
        Limits {
            version: table.version,
            units: units(table),
            tokens: [GacTokens::new(), GacTokens::new()],
            used: [false; 2],
            cut: [false; 2],
            topup: [false; 2],
            idle_rounds: 0,
            unreachable_since: None,
        }
    }
}

fn units(table: &Table) -> [u32; 2] {
    match table.capacity {
        Capacity::OnDemand => [0, 0],
        Capacity::Provisioned {
            read_units,
            write_units,
        } => [read_units, write_units],
    }
}

/// A core's GAC client.
#[derive(Debug)]
pub struct GacClient {
    addrs: Vec<SocketAddr>,
    /// This core's name to GAC.
    router: u64,
    period: Cell<Duration>,
    limits: RefCell<HashMap<u32, Limits>>,
    /// A request waits for a grant: ask now (the flag keeps a wake-up
    /// that came during a round).
    wake: event_listener::Event,
    woken: Cell<bool>,
    /// A round of asks finished.
    answered: event_listener::Event,
    started: Instant,
}

impl GacClient {
    pub fn new(addrs: Vec<SocketAddr>, router: u64) -> GacClient {
        GacClient {
            addrs,
            router,
            period: Cell::new(DEFAULT_PERIOD),
            limits: RefCell::new(HashMap::new()),
            wake: event_listener::Event::new(),
            woken: Cell::new(false),
            answered: event_listener::Event::new(),
            started: Instant::now(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.addrs.is_empty()
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Whether a request of `cost` milli-units on `table` may go on.
    pub async fn admit(&self, table: &Table, write: bool, cost: u64) -> Gate {
        if !self.is_enabled() {
            return Gate::Ungated;
        }
        let kind = usize::from(write);
        // The common case, with no listener to set up.
        if let Some(gate) = self.try_admit(table, kind, cost, self.now_ns()) {
            return gate;
        }
        let deadline = Instant::now() + FIRST_GRANT_WAIT;
        let mut woke = false;
        loop {
            let answered = self.answered.listen();
            let now = self.now_ns();
            if let Some(gate) = self.try_admit(table, kind, cost, now) {
                return gate;
            }
            // No current grant, or one spent early: ask at once, and wait
            // (bounded) for the answer.
            if !woke {
                self.woken.set(true);
                self.wake.notify(1);
                woke = true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Gate::Ungated;
            }
            futures_lite::future::or(answered, async {
                glommio::timer::sleep(left).await;
            })
            .await;
        }
    }

    /// The decision if one can be made now; `None` while a grant is
    /// wanted and GAC has not been found unreachable.
    fn try_admit(&self, table: &Table, kind: usize, cost: u64, now: u64) -> Option<Gate> {
        let mut limits = self.limits.borrow_mut();
        let limit = limits.entry(table.id).or_insert_with(|| Limits::new(table));
        if table.version > limit.version {
            limit.version = table.version;
            limit.units = units(table);
        }
        limit.used[kind] = true;
        if let Some(since) = limit.unreachable_since
            && now.saturating_sub(since) > GRACE.as_nanos() as u64
        {
            return Some(Gate::Ungated);
        }
        if !limit.tokens[kind].is_current(now) {
            // No grant, or it lapsed while the table was idle; after a
            // failed round the request goes ungated rather than wait.
            return limit.unreachable_since.map(|_| Gate::Ungated);
        }
        if limit.tokens[kind].try_spend(cost, now) {
            Some(Gate::Admitted)
        } else if limit.cut[kind] {
            Some(Gate::Throttled)
        } else {
            limit.topup[kind] = true;
            None
        }
    }

    /// Spends what a read turned out to cost beyond what it was admitted
    /// with.
    pub fn charge(&self, table: u32, write: bool, cost: u64) {
        if let Some(limit) = self.limits.borrow_mut().get_mut(&table) {
            limit.tokens[usize::from(write)].charge(cost);
        }
    }

    /// Asks every period, and whenever a request waits for a grant.
    pub async fn run(self: Rc<Self>, links: Rc<NodeLinks>) {
        let mut next_due = Instant::now() + self.period.get();
        loop {
            let woken = self.wake.listen();
            if !self.woken.replace(false) {
                let left = next_due.saturating_duration_since(Instant::now());
                futures_lite::future::or(woken, async {
                    glommio::timer::sleep(left).await;
                })
                .await;
                self.woken.set(false);
            }
            let due = Instant::now() >= next_due;
            if due {
                next_due = Instant::now() + self.period.get();
            }
            self.round(&links, due).await;
            self.answered.notify(usize::MAX);
        }
    }

    /// One round of asks to the tables' home GAC processes: when `due`
    /// (every period), for every limit served since the last; between
    /// (a request is waiting), only for limits with no grant or a spent
    /// one, so a waiting request does not shrink its neighbours' grants.
    async fn round(&self, links: &NodeLinks, due: bool) {
        let period_ns = self.period.get().as_nanos() as u64;
        let started = self.now_ns();
        let mut groups: HashMap<usize, Vec<GacAsk>> = HashMap::new();
        {
            let mut limits = self.limits.borrow_mut();
            if due {
                limits.retain(|_, l| l.idle_rounds <= IDLE_ROUNDS_MAX);
            }
            for (table, limit) in limits.iter_mut() {
                if due {
                    if limit.used == [false; 2] {
                        limit.idle_rounds += 1;
                        continue;
                    }
                    limit.idle_rounds = 0;
                }
                for kind in 0..2 {
                    let needs = limit.topup[kind] || !limit.tokens[kind].is_current(started);
                    if !limit.used[kind] || !(due || needs) {
                        continue;
                    }
                    limit.used[kind] = false;
                    let tokens = &mut limit.tokens[kind];
                    let spent = tokens.spent();
                    let mut wanted = tokens.wanted(started, period_ns);
                    if std::mem::take(&mut limit.topup[kind]) {
                        // The grant ran out before the period did: twice
                        // as much, so a growing load needs few top-ups.
                        let last = tokens.last_grant().unwrap_or(0);
                        wanted = wanted.max(last.saturating_mul(2));
                    }
                    if !tokens.is_current(started) {
                        // A first ask, or the first since the table went
                        // idle: a whole period of the table's rate (GAC
                        // cuts it to this core's fair share).
                        let units = match limit.units[kind] {
                            0 if kind == 1 => ON_DEMAND_WRITE_UNITS_START,
                            0 => ON_DEMAND_READ_UNITS_START,
                            units => u64::from(units),
                        };
                        let period = u128::from(units * UNIT) * u128::from(period_ns);
                        wanted = wanted.max((period / 1_000_000_000) as u64);
                    }
                    groups
                        .entry(*table as usize % self.addrs.len())
                        .or_default()
                        .push(GacAsk {
                            table: *table,
                            version: limit.version,
                            write: kind == 1,
                            units: limit.units[kind],
                            wanted,
                            spent,
                        });
                }
            }
        }
        for (home, asks) in groups {
            let answer = self.ask(links, home, &asks).await;
            let now = self.now_ns();
            let mut limits = self.limits.borrow_mut();
            match answer {
                Some((period, grants)) => {
                    self.period.set(period);
                    // A grant lasts until the round after next, so a late
                    // round does not leave a gap.
                    let expires = now + 2 * period.as_nanos() as u64;
                    for (ask, grant) in asks.iter().zip(grants) {
                        if let Some(limit) = limits.get_mut(&ask.table) {
                            let kind = usize::from(ask.write);
                            tracing::debug!(
                                table = ask.table,
                                write = ask.write,
                                wanted = ask.wanted,
                                spent = ask.spent,
                                grant,
                                "GAC round"
                            );
                            limit.tokens[kind].granted(grant, expires);
                            // Cut: GAC held back more than an eighth of the
                            // ask (a near miss is rounding, not a limit).
                            limit.cut[kind] = grant < ask.wanted - ask.wanted / 8;
                            limit.unreachable_since = None;
                        }
                    }
                }
                None => {
                    let expires = now + 2 * period_ns;
                    for ask in &asks {
                        if let Some(limit) = limits.get_mut(&ask.table) {
                            let kind = usize::from(ask.write);
                            limit.unreachable_since.get_or_insert(now);
                            limit.tokens[kind].renew(expires);
                        }
                    }
                }
            }
        }
    }

    /// Sends `asks` to their home GAC, or to the others in turn; the
    /// answer's period and grants, or `None` when no GAC answered.
    async fn ask(
        &self,
        links: &NodeLinks,
        home: usize,
        asks: &[GacAsk],
    ) -> Option<(Duration, Vec<u64>)> {
        let request = wire::encode_gac_request(&GacRequest::Grant {
            router: self.router,
            asks: asks.to_vec(),
        });
        for at in 0..self.addrs.len() {
            let addr = self.addrs[(home + at) % self.addrs.len()];
            let connection = match links.link(addr, GAC_TIMEOUT).await {
                Ok(connection) => connection,
                Err(message) => {
                    tracing::debug!(%message, "router: GAC not reachable");
                    continue;
                }
            };
            match connection.request(&request, GAC_TIMEOUT).await {
                Ok(bytes) => match wire::decode_gac_response(&bytes) {
                    Ok(GacResponse::Granted { period_ms, grants })
                        if grants.len() == asks.len() =>
                    {
                        let period = Duration::from_millis(u64::from(period_ms).max(1));
                        return Some((period, grants));
                    }
                    other => tracing::warn!(?other, %addr, "router: unexpected GAC answer"),
                },
                Err(error) => {
                    links.drop_link(addr);
                    tracing::debug!(%error, %addr, "router: GAC request failed");
                }
            }
        }
        None
    }
}
