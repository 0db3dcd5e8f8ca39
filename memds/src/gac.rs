//! A global admission control (GAC) process: holds each table's read and
//! write limits as token buckets and grants routers tokens for a period
//! at a time (docs/admission.md). The decisions are
//! [`cairn_common::admission::GacServer`]'s; this is its network shell.
//!
//! GAC keeps no durable state. Routers send each table's capacity (from
//! the catalog MemDS serves them) with every ask, and a restarted process
//! rebuilds its limits from the next round of asks; routers renew their
//! last grants while no GAC answers, so a restart drops no traffic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_common::admission::{
    GacServer, ON_DEMAND_READ_UNITS_START, ON_DEMAND_WRITE_UNITS_START, UNIT,
};
use cairn_common::quic::{Connection, Endpoint, Identity};
use cairn_common::wire::{self, ErrorCode, GacAsk, GacRequest, GacResponse};

use crate::executor::{Ready, ServiceThread, Stopped};

/// Most limits one grant request may ask for.
pub const ASKS_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct GacConfig {
    pub listen: SocketAddr,
    /// Presented to routers.
    pub identity: Identity,
    /// How often routers ask, and how long a grant lasts.
    pub period: Duration,
}

impl GacConfig {
    pub fn new(listen: SocketAddr, identity: Identity) -> GacConfig {
        GacConfig {
            listen,
            identity,
            period: Duration::from_secs(1),
        }
    }
}

/// A running GAC process (one executor).
#[derive(Debug)]
pub struct Gac(ServiceThread);

impl Gac {
    pub fn start(config: GacConfig) -> Result<Gac, String> {
        if config.period.is_zero() || config.period > Duration::from_secs(60) {
            return Err(format!(
                "the GAC period must be between 1 ms and 60 s, not {:?}",
                config.period
            ));
        }
        ServiceThread::spawn("cairn-gac", move |ready, stopped| {
            run(config, ready, stopped)
        })
        .map(Gac)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Blocks until the process stops (it runs until the process ends).
    pub fn wait(self) {
        self.0.wait();
    }
}

/// The limit's key in [`GacServer`]: a table's reads or its writes.
fn bucket(table: u32, write: bool) -> u64 {
    u64::from(table) << 1 | u64::from(write)
}

/// GAC's state: the sans-IO core, and which version of each table's
/// capacity it holds.
#[derive(Debug)]
struct State {
    core: GacServer,
    /// Per limit: the table version its rate was set from, and the units.
    versions: HashMap<u64, (u64, u32)>,
    started: Instant,
    requests: u64,
    granted: u64,
}

impl State {
    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn answer(&mut self, request: GacRequest) -> GacResponse {
        match request {
            GacRequest::Grant { router, asks } => {
                if asks.len() > ASKS_MAX {
                    return GacResponse::Error {
                        code: ErrorCode::Validation,
                        message: format!("at most {ASKS_MAX} limits per grant request"),
                    };
                }
                self.requests += 1;
                let now = self.now_ns();
                let grants = asks
                    .iter()
                    .map(|ask| self.grant(router, ask, now))
                    .collect();
                GacResponse::Granted {
                    period_ms: (self.core.period_ns() / 1_000_000) as u32,
                    grants,
                }
            }
            GacRequest::Stats => GacResponse::Stats {
                requests: self.requests,
                limits: self.versions.len() as u64,
                granted: self.granted,
            },
        }
    }

    fn grant(&mut self, router: u64, ask: &GacAsk, now: u64) -> u64 {
        let key = bucket(ask.table, ask.write);
        let known = self.versions.get(&key).copied();
        // A newer table version (or a first sight) sets the limit; an
        // older one, from a router whose catalog lags, does not.
        if known.is_none_or(|(version, _)| ask.version > version) {
            if ask.units == 0 {
                let floor = if ask.write {
                    ON_DEMAND_WRITE_UNITS_START
                } else {
                    ON_DEMAND_READ_UNITS_START
                };
                self.core.set_on_demand(key, floor * UNIT, now);
            } else {
                self.core.set_table(key, u64::from(ask.units) * UNIT, now);
            }
            self.versions.insert(key, (ask.version, ask.units));
        }
        let granted = self.core.grant(key, router, ask.wanted, ask.spent, now);
        self.granted = self.granted.saturating_add(granted);
        granted
    }
}

async fn run(config: GacConfig, ready: Ready, stopped: Stopped) {
    let bound = config.identity.server_config().and_then(|server| {
        Endpoint::bind(config.listen, Some(server), None)
            .map_err(|e| format!("listening on {}: {e}", config.listen))
    });
    let listening = match bound {
        Ok(endpoint) => endpoint,
        Err(message) => {
            let _ = ready.send(Err(message)).await;
            return;
        }
    };
    let _ = ready
        .send(listening.local_addr().map_err(|e| e.to_string()))
        .await;
    let state = Rc::new(RefCell::new(State {
        core: GacServer::new(config.period.as_nanos() as u64),
        versions: HashMap::new(),
        started: Instant::now(),
        requests: 0,
        granted: 0,
    }));
    let accepting = async {
        while let Ok(connection) = listening.accept().await {
            glommio::spawn_local(serve(connection, state.clone())).detach();
        }
    };
    futures_lite::future::or(accepting, async {
        let _ = stopped.recv().await;
    })
    .await;
}

async fn serve(connection: Connection, state: Rc<RefCell<State>>) {
    while let Ok(request) = connection.next_request().await {
        let response = match request
            .body
            .map_err(|e| e.to_string())
            .and_then(|body| wire::decode_gac_request(&body).map_err(|e| e.to_string()))
        {
            Ok(decoded) => state.borrow_mut().answer(decoded),
            Err(message) => GacResponse::Error {
                code: ErrorCode::Malformed,
                message,
            },
        };
        let _ = connection.respond(request.stream, &wire::encode_gac_response(&response));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(period: Duration) -> State {
        State {
            core: GacServer::new(period.as_nanos() as u64),
            versions: HashMap::new(),
            started: Instant::now(),
            requests: 0,
            granted: 0,
        }
    }

    fn ask(version: u64, units: u32, wanted: u64) -> GacAsk {
        GacAsk {
            table: 3,
            version,
            write: true,
            units,
            wanted,
            spent: 0,
        }
    }

    fn grant(state: &mut State, asked: GacAsk) -> u64 {
        match state.answer(GacRequest::Grant {
            router: 1,
            asks: vec![asked],
        }) {
            GacResponse::Granted { grants, .. } => grants[0],
            other => panic!("{other:?}"),
        }
    }

    /// A table's units come from the newest version any router reported;
    /// a lagging router's older capacity does not undo a change.
    #[test]
    fn the_newest_table_version_sets_the_limit() {
        let mut state = state(Duration::from_secs(1));
        let key = bucket(3, true);
        grant(&mut state, ask(5, 10, 1));
        assert_eq!(state.core.rate(key), Some(10 * UNIT));
        grant(&mut state, ask(6, 40, 1));
        assert_eq!(state.core.rate(key), Some(40 * UNIT));
        grant(&mut state, ask(5, 10, 1));
        assert_eq!(state.core.rate(key), Some(40 * UNIT), "stale version");
        grant(&mut state, ask(7, 0, 1));
        assert_eq!(
            state.core.rate(key),
            Some(ON_DEMAND_WRITE_UNITS_START * UNIT),
            "on demand starts at its floor"
        );
    }

    /// Grants never exceed a period of the table's capacity, and too many
    /// asks in one request are refused.
    #[test]
    fn grants_are_bounded_and_requests_too() {
        let mut state = state(Duration::from_millis(500));
        assert_eq!(grant(&mut state, ask(1, 100, u64::MAX)), 50 * UNIT);
        let many = GacRequest::Grant {
            router: 1,
            asks: vec![ask(1, 100, 1); ASKS_MAX + 1],
        };
        assert!(matches!(
            state.answer(many),
            GacResponse::Error {
                code: ErrorCode::Validation,
                ..
            }
        ));
    }
}
