//! The recording console (issue #16): pages in the browser, served from the
//! binary on the HTTP port under `/console/`, for the people who watch the
//! recordings: the calls in progress with a level meter per direction,
//! listen-in, a search over the recordings with each one's waveform, and the
//! taps this receiver drives.
//!
//! * Sign-in is with the HTTP port's token (`http-token-file`): the page posts
//!   it once and gets a session cookie (random, `HttpOnly`,
//!   `SameSite=Strict`), which then also opens `/api/calls` and `listen`.
//!   Sessions end after [`SESSION_IDLE`] unused or [`SESSION_MAX`] in all.
//! * Every listen and every download goes to the log and the metadata feed,
//!   with who (session prefix, remote address) and when.
//! * An address that gives [`SIGN_IN_FAILURES`] wrong tokens within
//!   [`SIGN_IN_WINDOW`] is refused unchecked until the window is over
//!   ([`SignInLimiter`]): guessing the token costs a minute per five tries.
//! * The pieces that think — sessions, the recordings [`index`], the meters and
//!   waveforms of [`audio`] — are plain types with time passed in; `http`
//!   only wires them to requests.

pub mod audio;
mod http;
pub mod index;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use http::routes;

use crate::taps::TapBoard;

/// A session unused this long is over.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session is over this long after sign-in, used or not.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once: past it the oldest is dropped.
const MAX_SESSIONS: usize = 1024;
/// The session cookie's name.
pub const COOKIE: &str = "rst_session";
/// Wrong tokens an address may give within [`SIGN_IN_WINDOW`].
pub const SIGN_IN_FAILURES: u32 = 5;
/// How long an address's wrong tokens count against it.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose wrong tokens are remembered at once: past it the oldest go.
const MAX_SIGN_IN_ADDRESSES: usize = 4096;

/// What the console's pages need beyond the HTTP port's state.
#[derive(Debug)]
pub struct Console {
    pub sessions: Sessions,
    pub sign_ins: SignInLimiter,
    pub index: Arc<index::Index>,
    pub taps: Arc<TapBoard>,
    /// The record folder, canonical: no file outside it is ever served.
    pub record_dir: PathBuf,
}

impl Console {
    /// A console over `record_dir`, whose index loads in the background.
    pub fn start(record_dir: PathBuf, taps: Arc<TapBoard>) -> Arc<Console> {
        let index = Arc::new(index::Index::default());
        let console = Arc::new(Console {
            sessions: Sessions::default(),
            sign_ins: SignInLimiter::default(),
            index: index.clone(),
            taps,
            record_dir: record_dir.clone(),
        });
        tokio::task::spawn_blocking(move || index::load(&record_dir, &index));
        console
    }
}

/// The signed-in sessions, sans-IO: the caller says what time it is.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    opened: Instant,
    used: Instant,
}

impl Sessions {
    /// A new session; its id, 256 random bits in hex.
    pub fn open(&self, now: Instant) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut open = self.lock();
        open.retain(|_, session| alive(session, now));
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open
                .iter()
                .min_by_key(|(_, session)| session.opened)
                .map(|(id, _)| id.clone())
            {
                open.remove(&oldest);
            }
        }
        open.insert(
            id.clone(),
            Session {
                opened: now,
                used: now,
            },
        );
        id
    }

    /// Whether `id` is a session still open at `now` (which counts as a use).
    pub fn check(&self, id: &str, now: Instant) -> bool {
        let mut open = self.lock();
        match open.get_mut(id) {
            Some(session) if alive(session, now) => {
                session.used = now;
                true
            }
            Some(_) => {
                open.remove(id);
                false
            }
            None => false,
        }
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Wrong tokens per address, sans-IO: the caller says what time it is.
#[derive(Debug, Default)]
pub struct SignInLimiter {
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// The first wrong token of the window.
    since: Instant,
}

impl SignInLimiter {
    /// Whether `peer` may try a token at `now`; if not, how long until it may.
    pub fn check(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        let failures = self.lock();
        match failures.get(&peer) {
            Some(f) if f.count >= SIGN_IN_FAILURES => {
                let over = f.since + SIGN_IN_WINDOW;
                match over.checked_duration_since(now) {
                    Some(wait) if !wait.is_zero() => Err(wait),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// `peer` gave a wrong token at `now`.
    pub fn failed(&self, peer: IpAddr, now: Instant) {
        let mut failures = self.lock();
        if failures.len() >= MAX_SIGN_IN_ADDRESSES && !failures.contains_key(&peer) {
            failures.retain(|_, f| now.saturating_duration_since(f.since) < SIGN_IN_WINDOW);
            if failures.len() >= MAX_SIGN_IN_ADDRESSES {
                if let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(a, _)| *a)
                {
                    failures.remove(&oldest);
                }
            }
        }
        let entry = failures.entry(peer).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.saturating_duration_since(entry.since) >= SIGN_IN_WINDOW {
            *entry = Failures {
                count: 0,
                since: now,
            };
        }
        entry.count += 1;
    }

    /// `peer` signed in: its wrong tokens are forgotten.
    pub fn succeeded(&self, peer: IpAddr) {
        self.lock().remove(&peer);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn alive(session: &Session, now: Instant) -> bool {
    now.saturating_duration_since(session.used) < SESSION_IDLE
        && now.saturating_duration_since(session.opened) < SESSION_MAX
}

/// The session id a request's `Cookie` header carries.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// How a session is named in logs and events: enough to tell sessions apart,
/// not enough to use one.
pub fn session_label(id: &str) -> String {
    format!("session {}", id.get(..8).unwrap_or(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_or_old() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let id = sessions.open(t0);
        assert_eq!(id.len(), 64);
        assert!(sessions.check(&id, t0 + Duration::from_secs(60)));
        assert!(!sessions.check("not-a-session", t0));
        // Used every 20 minutes: alive until its 12 hours are up.
        let mut now = t0;
        while now + Duration::from_secs(20 * 60) < t0 + SESSION_MAX {
            now += Duration::from_secs(20 * 60);
            assert!(sessions.check(&id, now));
        }
        assert!(!sessions.check(&id, t0 + SESSION_MAX));
        let idle = sessions.open(t0);
        assert!(!sessions.check(&idle, t0 + SESSION_IDLE));
        let closed = sessions.open(t0);
        sessions.close(&closed);
        assert!(!sessions.check(&closed, t0));
        assert_ne!(sessions.open(t0), sessions.open(t0));
    }

    #[test]
    fn wrong_tokens_lock_an_address_out_for_the_window() {
        let limiter = SignInLimiter::default();
        let (peer, other): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        let s = Duration::from_secs;
        for n in 0..SIGN_IN_FAILURES {
            assert_eq!(limiter.check(peer, t0 + s(n.into())), Ok(()));
            limiter.failed(peer, t0 + s(n.into()));
        }
        assert_eq!(limiter.check(peer, t0 + s(10)), Err(s(50)));
        assert_eq!(limiter.check(other, t0 + s(10)), Ok(()), "per address");
        assert_eq!(limiter.check(peer, t0 + SIGN_IN_WINDOW), Ok(()));
        // A new window starts with the next wrong token.
        limiter.failed(peer, t0 + SIGN_IN_WINDOW);
        assert_eq!(limiter.check(peer, t0 + SIGN_IN_WINDOW), Ok(()));
        // Signing in forgets.
        for _ in 0..SIGN_IN_FAILURES {
            limiter.failed(other, t0);
        }
        assert!(limiter.check(other, t0).is_err());
        limiter.succeeded(other);
        assert_eq!(limiter.check(other, t0), Ok(()));
        // Bounded: many addresses, each remembered until pushed out.
        for n in 0..(MAX_SIGN_IN_ADDRESSES as u32 + 10) {
            limiter.failed(IpAddr::from(n.to_be_bytes()), t0);
        }
        assert!(limiter.lock().len() <= MAX_SIGN_IN_ADDRESSES);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(session_cookie(&headers), None);
        headers.insert(
            axum::http::header::COOKIE,
            "a=1; rst_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        assert_eq!(session_label("0123456789abcdef"), "session 01234567");
        assert_eq!(session_label("ab"), "session ab");
    }
}
