//! The controller's JSON request bodies (jitgate-api's types, parsed by the controller's HTTP
//! layer and validated by its model): the initiate request and the JIT policy, parsed with the
//! server's limits and validated as the handlers do.
//!
//! Properties: never a panic; a body over the server's size limit is refused; a policy that
//! validates shows as JSON (`to_body`, what GET returns) that validates to the same policy; a
//! validated request keeps its limits (1-32 VMs, 1-64 ports each, a justification of at most
//! 1024 bytes, at most 128 source prefixes per port once `*` is expanded).
#![no_main]

use jitgate_api::{InitiateBody as InitiateJson, PolicyBody as PolicyJson};
use jitgate_controller::http::extract::parse_body;
use jitgate_controller::policy::Policy;
use jitgate_controller::request::{Initiate, MAX_JUSTIFICATION};
use jitgate_controller::state::DEFAULT_MAX_BODY_BYTES;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};

/// A fixed "now" (2026-11-27T00:00:00Z) and caller address: the target must be deterministic.
const NOW_MS: i64 = 1_795_737_600_000;
const CALLER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

fuzz_target!(|data: &[u8]| {
    if data.len() > DEFAULT_MAX_BODY_BYTES {
        assert!(parse_body::<PolicyJson>(data, DEFAULT_MAX_BODY_BYTES).is_err());
        return;
    }
    if let Ok(j) = parse_body::<PolicyJson>(data, DEFAULT_MAX_BODY_BYTES)
        && let Ok(p) = Policy::from_body(&j)
    {
        assert!(!p.ports.is_empty() && p.ports.len() <= 256);
        let shown = p.to_body();
        let again = Policy::from_body(&shown).expect("a shown policy validates");
        assert_eq!(again, p, "policy changed through its JSON form");
        // And through the bytes a client would send back.
        let bytes = serde_json::to_vec(&shown).expect("serializes");
        let reparsed: PolicyJson = parse_body(&bytes, usize::MAX).expect("the shown policy parses");
        assert_eq!(reparsed.ports, shown.ports);
    }
    if let Ok(j) = parse_body::<InitiateJson>(data, DEFAULT_MAX_BODY_BYTES)
        && let Ok(r) = Initiate::from_body(&j, CALLER, NOW_MS)
    {
        assert!(!r.justification.is_empty() && r.justification.len() <= MAX_JUSTIFICATION);
        assert!((1..=32).contains(&r.vms.len()));
        for vm in &r.vms {
            assert!((1..=64).contains(&vm.ports.len()));
            for p in &vm.ports {
                assert!((1..=128).contains(&p.prefixes.len()), "{:?}", p.prefixes);
                assert!(
                    p.prefixes.windows(2).all(|w| w[0] < w[1]),
                    "{:?}",
                    p.prefixes
                );
            }
        }
    }
});
