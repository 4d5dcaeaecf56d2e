//! The agent's configuration file (agent/src/config.rs): TOML parsing and validation, the
//! `--protect` syntax, and interface globs.
//!
//! Input: UTF-8 text. As a whole it is a config file; each of its lines is also tried as a
//! `--protect` value, and the first line as an interface name against every glob of a
//! config that validates.
//!
//! Properties: never a panic or a hang; a config that validates has every invariant the
//! agent relies on (interfaces present and well-formed, protected set sorted, unique and
//! without a port that is both keep and cut, durations within bounds, absolute paths).
#![no_main]

use jitgate_agent::config::{
    AgentConfig, MAX_MAX_GRANT, Overrides, glob_match, parse_duration, parse_protect,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines().take(16) {
        if let Ok(ports) = parse_protect(line) {
            assert!(matches!(ports.len(), 1 | 2), "{line:?}: {ports:?}");
        }
        if let Ok(d) = parse_duration("fuzz", line) {
            assert!(!d.is_zero());
        }
    }
    let Ok(cfg) = AgentConfig::from_toml(text, &Overrides::default()) else {
        return;
    };
    assert!(!cfg.interfaces.is_empty());
    for i in &cfg.interfaces {
        assert!(!i.is_empty() && i.len() <= 15 && !i.contains('/'), "{i:?}");
        assert!(!i.chars().any(char::is_whitespace), "{i:?}");
    }
    for w in cfg.protected.windows(2) {
        assert!(
            w[0] < w[1],
            "protected set not sorted and unique: {:?}",
            cfg.protected
        );
        assert!(
            !(w[0].protocol == w[1].protocol && w[0].port == w[1].port),
            "{:?} listed with both keep and cut",
            w[0]
        );
    }
    assert!(!cfg.flow_idle_timeout.is_zero());
    assert!(!cfg.max_grant.is_zero() && cfg.max_grant <= MAX_MAX_GRANT);
    for p in [&cfg.pin_dir, &cfg.state_dir, &cfg.socket] {
        assert!(p.is_absolute(), "{}", p.display());
    }
    // Interface names are at most 15 bytes (IFNAMSIZ - 1).
    let name: String = text.lines().next().unwrap_or("").chars().take(15).collect();
    for g in &cfg.interfaces {
        let m = glob_match(g, &name);
        if g == &name && !g.contains(['*', '?']) {
            assert!(m, "{g:?} does not match itself");
        }
        if g.chars().all(|c| c == '*') {
            assert!(m, "{g:?} does not match {name:?}");
        }
    }
});
