//! Which controller the agent dials, and which next when that one goes away (docs/ha.md,
//! "Agent failover").
//!
//! The list is, in order of precedence: `controller_endpoints` from the agent's
//! configuration; else the list the controllers last sent (`ControllerMsg::Settings`, kept in
//! `state_dir/controllers.json` so that a restart while the controllers are unreachable
//! still knows them); else the list the enrolment gave; else the enrolling controller alone.
//! The agent starts at the endpoint it was last connected to and, when a connection ends or
//! fails, tries the next one at once; only after every endpoint failed in a row does it back
//! off (`channel`).

use jitgate_proto::{Endpoint, MAX_ENDPOINTS};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the agent keeps between runs.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// The list the controllers last sent.
    #[serde(default)]
    endpoints: Vec<String>,
    /// The endpoint of the last connection that came up.
    #[serde(default)]
    last: Option<String>,
}

/// The endpoints in the order they are tried, and where the agent is in that order.
#[derive(Debug)]
pub struct Endpoints {
    /// `controller_endpoints` (empty: not configured).
    configured: Vec<Endpoint>,
    /// From the controllers (or the enrolment until they send one).
    learned: Vec<Endpoint>,
    /// The enrolling controller's endpoint, the last resort.
    enrolled: Endpoint,
    /// Index into [`Endpoints::list`] of the endpoint to dial next.
    at: usize,
    file: PathBuf,
    saved: Saved,
}

impl Endpoints {
    pub const FILE: &'static str = "controllers.json";

    /// Builds the list from the configuration, the saved file (an unreadable one is ignored
    /// with a warning: the enrolment's list still works) and the enrolment.
    pub fn load(
        state_dir: &Path,
        configured: Vec<Endpoint>,
        enrolled: Endpoint,
        enrolment_list: &[String],
    ) -> Endpoints {
        let file = state_dir.join(Self::FILE);
        let saved: Saved = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable list of controllers");
                Saved::default()
            }),
            Err(_) => Saved::default(),
        };
        let learned = valid(if saved.endpoints.is_empty() {
            enrolment_list
        } else {
            &saved.endpoints
        });
        let mut e = Endpoints {
            configured,
            learned,
            enrolled,
            at: 0,
            file,
            saved,
        };
        let start = e
            .saved
            .last
            .as_deref()
            .and_then(|l| l.parse::<Endpoint>().ok())
            .unwrap_or_else(|| e.enrolled.clone());
        e.at = e.position(&start).unwrap_or(0);
        e
    }

    /// The endpoints in the order they are tried.
    pub fn list(&self) -> &[Endpoint] {
        if !self.configured.is_empty() {
            &self.configured
        } else if !self.learned.is_empty() {
            &self.learned
        } else {
            std::slice::from_ref(&self.enrolled)
        }
    }

    /// The endpoint to dial now.
    pub fn current(&self) -> Endpoint {
        let l = self.list();
        l[self.at % l.len()].clone()
    }

    /// Moves on to the next endpoint (after a failure or the end of a connection).
    pub fn advance(&mut self) {
        self.at = (self.at + 1) % self.list().len();
    }

    fn position(&self, e: &Endpoint) -> Option<usize> {
        self.list().iter().position(|x| x == e)
    }

    /// A connection to `e` came up: start there next time (also after a restart).
    pub fn connected(&mut self, e: &Endpoint) {
        let s = e.to_string();
        if self.saved.last.as_deref() != Some(&s) {
            self.saved.last = Some(s);
            self.save();
        }
    }

    /// The controllers sent their list. Entries that do not parse are dropped with a
    /// warning (the rest still serve); an empty result changes nothing. The endpoint in use
    /// stays the one in use.
    pub fn learn(&mut self, sent: &[String]) {
        let list = valid(sent);
        if list.is_empty() {
            return;
        }
        if list != self.learned {
            let now = self.current();
            tracing::info!(controllers = ?list.iter().map(ToString::to_string).collect::<Vec<_>>(), "controller endpoints updated");
            self.learned = list;
            self.at = self.position(&now).unwrap_or(0);
        }
        let names: Vec<String> = self.learned.iter().map(ToString::to_string).collect();
        if self.saved.endpoints != names {
            self.saved.endpoints = names;
            self.save();
        }
    }

    fn save(&self) {
        let write = || -> std::io::Result<()> {
            crate::state_file::replace(&self.file, &serde_json::to_vec(&self.saved)?)
        };
        if let Err(e) = write() {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot keep the list of controllers");
        }
    }
}

/// The entries that parse, first of duplicates, at most [`MAX_ENDPOINTS`].
fn valid(items: &[String]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for s in items {
        match s.parse::<Endpoint>() {
            Ok(e) if !out.contains(&e) && out.len() < MAX_ENDPOINTS => out.push(e),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "ignoring a controller endpoint"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    fn names(e: &Endpoints) -> Vec<String> {
        e.list().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn rotation_starts_at_the_enrolling_controller_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let list = ["a:1".to_string(), "b:1".into(), "c:1".into()];
        let mut e = Endpoints::load(dir.path(), vec![], ep("b:1"), &list);
        assert_eq!(names(&e), list);
        assert_eq!(e.current(), ep("b:1"));
        e.advance();
        assert_eq!(e.current(), ep("c:1"));
        e.advance();
        assert_eq!(e.current(), ep("a:1"));
    }

    #[test]
    fn the_last_connected_endpoint_and_the_learned_list_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Endpoints::load(dir.path(), vec![], ep("a:1"), &[]);
        assert_eq!(names(&e), ["a:1"]);
        e.learn(&[
            "a:1".into(),
            "not an endpoint".into(),
            "b:1".into(),
            "a:1".into(),
        ]);
        assert_eq!(names(&e), ["a:1", "b:1"]);
        assert_eq!(e.current(), ep("a:1"), "learning keeps the endpoint in use");
        e.advance();
        e.connected(&ep("b:1"));
        let again = Endpoints::load(dir.path(), vec![], ep("a:1"), &[]);
        assert_eq!(names(&again), ["a:1", "b:1"]);
        assert_eq!(again.current(), ep("b:1"));
    }

    #[test]
    fn configured_endpoints_win_and_an_unreadable_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(Endpoints::FILE), b"{not json").unwrap();
        let mut e = Endpoints::load(
            dir.path(),
            vec![ep("x:1"), ep("y:1")],
            ep("a:1"),
            &["a:1".into(), "b:1".into()],
        );
        assert_eq!(names(&e), ["x:1", "y:1"]);
        assert_eq!(e.current(), ep("x:1"));
        e.learn(&["c:1".into()]);
        assert_eq!(names(&e), ["x:1", "y:1"], "configuration overrides");
        // Nothing sent that parses changes nothing.
        let dir = tempfile::tempdir().unwrap();
        let mut e = Endpoints::load(dir.path(), vec![], ep("a:1"), &[]);
        e.learn(&["bad".into()]);
        assert_eq!(names(&e), ["a:1"]);
    }
}
