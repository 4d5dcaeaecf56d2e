//! Against a real, certified OpenID provider (oidc-provider on Node.js, over TLS on
//! loopback), with a scripted person signing in through its pages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jitgate_oidc::{
    CallbackParams, ClientKind, DevicePoll, Error, Groups, MemoryReplayGuard, NoRole, Options,
    PendingDevice, PendingLogin, ProviderStatus, RefreshGrant, RelyingParty, SealKey, Sealer,
    StateError, map_roles,
};
use jitgate_oidc_testprovider::{Choice, Setup, TestCa, TestProvider, WEB_CLIENT_ID};
use support::{Rig, WEB_REDIRECT, cli_sign_in, eventually, options, query_of};

fn groups(g: &[&str]) -> Groups {
    Groups::Known {
        groups: g.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
    }
}

#[tokio::test]
async fn portal_code_flow_with_pkce_end_to_end() {
    let rig = Rig::start().await;
    let start = rig.start_portal().await;
    let url = url::Url::parse(&start.authorize_url).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], WEB_CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["response_mode"], "query");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], WEB_REDIRECT);
    assert!(q["code_challenge"].len() >= 43 && q["nonce"].len() >= 16 && q["state"].len() >= 16);
    let scopes: BTreeSet<&str> = q["scope"].split(' ').collect();
    assert_eq!(
        scopes,
        BTreeSet::from(["openid", "profile", "email", "groups", "offline_access"])
    );

    let alice = rig.person("alice");
    let (signed, _, cookie) = rig.portal_sign_in(&alice).await;
    assert!(
        cookie.len() < 1024,
        "the sealed state fits a cookie: {}",
        cookie.len()
    );
    let id = &signed.identity;
    assert_eq!(
        id.principal.as_str(),
        format!("oidc:{}#sub-alice", rig.op.issuer())
    );
    assert_eq!(id.display_name, "alice");
    assert_eq!(id.email.as_ref().unwrap().address, "alice@example.net");
    assert_eq!(id.groups, groups(&["jit-admins", "prod-ops"]));
    assert_eq!(signed.client, ClientKind::Portal);
    assert!(
        signed.refresh.is_some(),
        "offline_access gives a refresh token"
    );

    // The union of every matching row.
    let cfg = support::config(rig.op.issuer(), None, rig.ca.ca_file());
    let roles = map_roles(&id.groups, &cfg.roles).unwrap();
    let pairs: Vec<(&str, &str)> = roles
        .iter()
        .map(|g| (g.role.as_str(), g.scope.as_str()))
        .collect();
    assert_eq!(pairs, vec![("admin", "*"), ("requester", "rg:prod")]);
}

#[tokio::test]
async fn cli_loopback_code_flow_end_to_end() {
    let rig = Rig::start().await;
    let bob = rig.person("bob");
    let signed = cli_sign_in(&rig.rp, &rig.sealer, &rig.guard, &bob).await;
    assert_eq!(
        signed.identity.principal.as_str(),
        format!("oidc:{}#sub-bob", rig.op.issuer())
    );
    assert_eq!(signed.identity.groups, groups(&["prod-ops"]));
    assert_eq!(signed.client, ClientKind::Cli);
    assert_eq!(signed.refresh.as_ref().unwrap().client(), ClientKind::Cli);
    // The public client's refresh works too (and re-reads the groups).
    let again = rig
        .rp
        .refresh(signed.refresh.as_ref().unwrap(), &signed.identity.principal)
        .await
        .unwrap();
    assert_eq!(again.identity, signed.identity);

    // `jit logout`: the provider's refresh token is revoked and cannot be used again.
    let grant = again.refresh.unwrap();
    assert!(rig.rp.revoke(&grant).await.unwrap());
    let e = rig
        .rp
        .refresh(&grant, &signed.identity.principal)
        .await
        .unwrap_err();
    support::assert_refused(&e, "invalid_grant");
}

#[tokio::test]
async fn device_flow_end_to_end() {
    let rig = Rig::start().await;
    let start = rig.rp.start_device().await.unwrap();
    assert!(start.verification_uri.starts_with(rig.op.issuer()));
    assert!(!start.user_code.is_empty());
    // The CLI holds the sealed handle; nothing is stored on the controller.
    let handle = start.pending.seal(&rig.sealer);
    let pending = PendingDevice::open(&rig.sealer, &handle).unwrap();

    // Not approved yet.
    let poll = rig
        .rp
        .poll_device(&pending, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(poll, DevicePoll::Pending), "{poll:?}");

    let carol = rig.person("carol");
    carol
        .device(&start.verification_uri, &start.user_code, Choice::Allow)
        .await
        .unwrap();
    // The CLI polls again until the controller's long poll returns the sign-in.
    let t0 = std::time::Instant::now();
    let signed = loop {
        match rig
            .rp
            .poll_device(&pending, Duration::from_secs(2))
            .await
            .unwrap()
        {
            DevicePoll::Complete(s) => break s,
            DevicePoll::Pending => assert!(
                t0.elapsed() < Duration::from_secs(60),
                "approved, but still pending"
            ),
        }
    };
    assert_eq!(
        signed.identity.principal.as_str(),
        format!("oidc:{}#sub-carol", rig.op.issuer())
    );
    assert_eq!(signed.client, ClientKind::Cli);
    // In no group: she signs in and gets no role, with the reason.
    assert_eq!(signed.identity.groups, groups(&[]));
    let cfg = support::config(rig.op.issuer(), None, rig.ca.ca_file());
    let e = map_roles(&signed.identity.groups, &cfg.roles).unwrap_err();
    assert!(matches!(e, NoRole::NoMatch { .. }));
    assert_eq!(
        e.to_string(),
        "you are in no group, so you have no role; ask for one of: jit-admins, prod-ops"
    );

    // The device code is spent: the provider refuses it a second time.
    let again = rig.rp.poll_device(&pending, Duration::from_secs(1)).await;
    support::assert_refused(&again.unwrap_err(), "invalid_grant");
}

#[tokio::test]
async fn device_flow_denied_by_the_person() {
    let rig = Rig::start().await;
    let start = rig.rp.start_device().await.unwrap();
    // Bob enters the code, then cancels at the login page.
    rig.person("bob")
        .device(&start.verification_uri, &start.user_code, Choice::Cancel)
        .await
        .unwrap();
    let r = rig
        .rp
        .poll_device(&start.pending, Duration::from_secs(2))
        .await;
    assert!(matches!(r, Err(Error::DeviceDenied)), "{r:?}");
}

#[tokio::test]
async fn refresh_rereads_groups_and_a_failed_refresh_is_an_error() {
    let rig = Rig::start().await;
    let bob_user = rig.op_user("bob").unwrap();
    let bob = rig.person("bob");
    let (signed, _, _) = rig.portal_sign_in(&bob).await;
    let principal = signed.identity.principal.clone();
    assert_eq!(signed.identity.groups, groups(&["prod-ops"]));

    // The refresh token at rest: sealed for one session row.
    let sealed = signed
        .refresh
        .as_ref()
        .unwrap()
        .seal(&rig.sealer, "session-7");
    let grant = RefreshGrant::open(&rig.sealer, "session-7", &sealed).unwrap();
    assert!(RefreshGrant::open(&rig.sealer, "session-8", &sealed).is_err());

    let cfg = support::config(rig.op.issuer(), None, rig.ca.ca_file());
    // Promoted at the provider: effective at the next refresh.
    rig.op.set_groups(&bob_user, &["jit-admins"]).await.unwrap();
    let r = rig.rp.refresh(&grant, &principal).await.unwrap();
    assert_eq!(r.identity.principal, principal);
    assert_eq!(r.identity.groups, groups(&["jit-admins"]));
    assert_eq!(
        map_roles(&r.identity.groups, &cfg.roles).unwrap()[0].role,
        "admin"
    );
    let grant = r.refresh.unwrap();

    // Removed from every group: no role after the refresh.
    rig.op.set_groups(&bob_user, &[]).await.unwrap();
    let r = rig.rp.refresh(&grant, &principal).await.unwrap();
    assert_eq!(r.identity.groups, groups(&[]));
    assert!(map_roles(&r.identity.groups, &cfg.roles).is_err());
    let grant = r.refresh.unwrap();

    // A refresh token presented for someone else is refused.
    let alice = support::Rig::op_user(&rig, "alice").unwrap();
    let other = jitgate_oidc::Principal::new(rig.op.issuer(), &alice.sub);
    let e = rig.rp.refresh(&grant, &other).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Rejected(jitgate_oidc::TokenRejected::SubjectChanged { .. })
        ),
        "{e}"
    );

    // Disabled at the provider: the refresh fails, which ends the session.
    rig.op.disable(&bob_user).await.unwrap();
    let e = rig.rp.refresh(&grant, &principal).await.unwrap_err();
    support::assert_refused(&e, "invalid_grant");
}

#[tokio::test]
async fn key_rotation_is_accepted_after_the_key_set_is_fetched_again() {
    let rig = Rig::start_with(
        Setup::default(),
        Options {
            jwks_min_refresh: Duration::ZERO,
            ..options()
        },
    )
    .await;
    let old_kids = rig.op.published_key_ids().await.unwrap();
    assert_eq!(old_kids.len(), 1);
    let alice = rig.person("alice");
    let (first, _, _) = rig.portal_sign_in(&alice).await;

    let new_kid = rig.op.rotate_keys().await.unwrap();
    assert!(!old_kids.contains(&new_kid));
    let ProviderStatus::Ready {
        key_ids,
        key_refreshes,
        ..
    } = rig.rp.status()
    else {
        panic!("{:?}", rig.rp.status())
    };
    assert_eq!((key_ids, key_refreshes), (old_kids.clone(), 0));

    // Signed with the new key: unknown at first, accepted after the key set is fetched.
    let bob = rig.person("bob");
    let (second, _, _) = rig.portal_sign_in(&bob).await;
    assert_eq!(second.identity.groups, groups(&["prod-ops"]));
    let ProviderStatus::Ready {
        key_ids,
        key_refreshes,
        ..
    } = rig.rp.status()
    else {
        panic!("{:?}", rig.rp.status())
    };
    assert_eq!(key_refreshes, 1);
    assert!(key_ids.contains(&new_kid) && key_ids.contains(&old_kids[0]));

    // A session from before the rotation refreshes (new key) without another fetch.
    let r = rig
        .rp
        .refresh(first.refresh.as_ref().unwrap(), &first.identity.principal)
        .await
        .unwrap();
    assert_eq!(r.identity.principal, first.identity.principal);
    assert!(matches!(
        rig.rp.status(),
        ProviderStatus::Ready {
            key_refreshes: 1,
            ..
        }
    ));
}

#[tokio::test]
async fn wrong_state_and_foreign_state_are_refused_before_the_provider_is_asked() {
    let rig = Rig::start().await;
    let start = rig.start_portal().await;
    let cookie = start.pending.seal(&rig.sealer);
    let back = rig
        .person("alice")
        .authorize(&start.authorize_url, WEB_REDIRECT, Choice::Allow)
        .await
        .unwrap();
    let good = CallbackParams::from_query(&query_of(&back));
    let pending = PendingLogin::open(&rig.sealer, &cookie).unwrap();

    // A state that is not this browser's.
    let wrong = CallbackParams {
        state: Some("attacker-state".into()),
        ..good.clone()
    };
    let e = pending.check_callback(&wrong).unwrap_err();
    assert!(matches!(e, Error::State(StateError::Mismatch)), "{e}");

    // Another sign-in's cookie (login CSRF: the attacker's code in the victim's browser).
    let other = rig.start_portal().await;
    let other_pending = PendingLogin::open(&rig.sealer, &other.pending.seal(&rig.sealer)).unwrap();
    let e = other_pending.check_callback(&good).unwrap_err();
    assert!(matches!(e, Error::State(StateError::Mismatch)), "{e}");

    // No sealed state of ours: another key, or a cookie altered in transit.
    let foreign = Sealer::new(&SealKey::generate());
    let e = PendingLogin::open(&foreign, &cookie).unwrap_err();
    assert!(matches!(e, Error::State(StateError::Unsealable)), "{e}");
    let mut altered = cookie.clone().into_bytes();
    let last = altered.len() - 5;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let e = PendingLogin::open(&rig.sealer, std::str::from_utf8(&altered).unwrap()).unwrap_err();
    assert!(matches!(e, Error::State(StateError::Unsealable)), "{e}");

    // None of that redeemed the code: the right state still signs in.
    let checked = pending.check_callback(&good).unwrap();
    let signed = rig.rp.finish_login(checked, &rig.guard).await.unwrap();
    assert_eq!(signed.identity.display_name, "alice");
}

#[tokio::test]
async fn a_replayed_callback_is_refused_by_us_and_a_reused_code_by_the_provider() {
    let rig = Rig::start().await;
    let (_, query, cookie) = rig.portal_sign_in(&rig.person("alice")).await;
    let cb = CallbackParams::from_query(&query);

    // The same callback again (back button, leaked URL with the cookie): refused before the
    // provider is asked.
    let checked = PendingLogin::open(&rig.sealer, &cookie)
        .unwrap()
        .check_callback(&cb)
        .unwrap();
    let e = rig
        .rp
        .finish_login(checked.clone(), &rig.guard)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Replayed), "{e}");

    // A controller that did not share the replay store: the provider refuses the used code.
    let e = rig
        .rp
        .finish_login(checked, &MemoryReplayGuard::new())
        .await
        .unwrap_err();
    support::assert_refused(&e, "invalid_grant");
}

#[tokio::test]
async fn cancelled_at_the_provider_is_a_refusal() {
    let rig = Rig::start().await;
    let start = rig.start_portal().await;
    let back = rig
        .person("bob")
        .authorize(&start.authorize_url, WEB_REDIRECT, Choice::Cancel)
        .await
        .unwrap();
    let e = start
        .pending
        .check_callback(&CallbackParams::from_query(&query_of(&back)))
        .unwrap_err();
    support::assert_refused(&e, "access_denied");
}

#[tokio::test]
async fn provider_unreachable_at_start_then_discovered_in_the_background() {
    let ca = Arc::new(TestCa::new().unwrap());
    // A port nobody listens on (yet).
    let port = support::free_port();
    let issuer = format!("https://127.0.0.1:{port}");
    let cfg = support::config(&issuer, None, ca.ca_file());
    let rp = RelyingParty::start(
        &cfg,
        Options {
            discovery_retry_max: Duration::from_millis(500),
            ..Options::default()
        },
    )
    .await
    .expect("an unreachable provider does not stop the controller");
    match rp.status() {
        ProviderStatus::Unavailable { reason, .. } => {
            assert!(reason.contains("discovery"), "{reason}");
            assert!(reason.to_lowercase().contains("connect"), "{reason}");
        }
        s => panic!("{s:?}"),
    }
    let e = rp.start_device().await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::ProviderUnavailable { .. }), "{msg}");
    assert!(msg.contains(&issuer), "{msg}");

    let op = TestProvider::start(
        ca.clone(),
        &Setup {
            port: Some(port),
            ..Setup::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(op.issuer(), issuer);
    eventually("background discovery", Duration::from_secs(60), || {
        matches!(rp.status(), ProviderStatus::Ready { .. })
    })
    .await;
    let person = jitgate_oidc_testprovider::Person::new(&ca, &Setup::default().users[1]).unwrap();
    let signed = cli_sign_in(
        &rp,
        &Sealer::new(&SealKey::generate()),
        &MemoryReplayGuard::new(),
        &person,
    )
    .await;
    assert_eq!(signed.identity.display_name, "bob");
    assert_eq!(signed.identity.principal.subject(), "sub-bob");
}

/// Whether `pid` is a live process (a zombie is dead: it only waits to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// The provider never outlives its test, also when the test process is killed with SIGKILL
/// (no Drop runs): this test runs itself as a child that starts a provider, kills the child,
/// and watches the provider go.
#[tokio::test]
async fn the_provider_dies_with_a_killed_test_process() {
    use std::io::{BufRead, Write};
    const CHILD: &str = "JITGATE_OIDC_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let ca = Arc::new(TestCa::new().unwrap());
        let op = TestProvider::start(ca, &Setup::default()).await.unwrap();
        println!("PROVIDER_PID={}", op.pid());
        std::io::stdout().flush().unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_provider_dies_with_a_killed_test_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest may print "test NAME ... " on the same line first.
            .find_map(|l| {
                l.split_once("PROVIDER_PID=")
                    .map(|(_, p)| p.trim().parse::<u32>().unwrap())
            })
    })
    .await
    .unwrap();
    let Some(pid) = pid else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child test did not start a provider");
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("provider.mjs") && alive(pid),
        "pid {pid} is not the provider"
    );
    // SIGKILL, to the child this test started (by its own handle).
    child.kill().unwrap();
    child.wait().unwrap();
    eventually(
        "the orphaned provider exits",
        Duration::from_secs(20),
        || !alive(pid),
    )
    .await;
}
