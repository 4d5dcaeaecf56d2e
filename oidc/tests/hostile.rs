//! Crafted ID tokens from a hostile issuer of our own, handed out through the real flow
//! (discovery, authorization with PKCE, token endpoint): each is refused with its own error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use jitgate_oidc::{
    CallbackParams, Error, LoginRequest, MemoryReplayGuard, Options, PendingLogin, ProviderStatus,
    RelyingParty, ReturnPath, SealKey, Sealer, SignIn, TokenRejected,
};
use support::hostile::{Discovery, Forgery, Hostile};
use support::{WEB_REDIRECT, query_of};

async fn rp_for(h: &Hostile, options: Options) -> RelyingParty {
    let cfg = support::config(&h.issuer, Some(&h.secret_file), h.ca.ca_file());
    RelyingParty::start(&cfg, options).await.unwrap()
}

fn options() -> Options {
    Options {
        portal_redirect: Some(WEB_REDIRECT.into()),
        // Rate limiting of key fetches is asserted where it matters.
        jwks_min_refresh: Duration::from_secs(3600),
        ..Options::default()
    }
}

/// One portal sign-in through the hostile issuer with the token it forges.
async fn sign_in(h: &Hostile, rp: &RelyingParty) -> Result<SignIn, Error> {
    let sealer = Sealer::new(&SealKey::generate());
    let start = rp
        .start_login(LoginRequest::Portal {
            return_to: ReturnPath::parse("/").unwrap(),
        })
        .await?;
    let cookie = start.pending.seal(&sealer);
    let back = h.authorize(&start.authorize_url).await;
    assert!(back.starts_with(WEB_REDIRECT), "{back}");
    let checked = PendingLogin::open(&sealer, &cookie)?
        .check_callback(&CallbackParams::from_query(&query_of(&back)))?;
    rp.finish_login(checked, &MemoryReplayGuard::new()).await
}

async fn refused(f: Forgery) -> TokenRejected {
    let h = Hostile::start().await;
    let rp = rp_for(&h, options()).await;
    // The control case first: the same issuer's honest token is accepted.
    let ok = sign_in(&h, &rp).await.unwrap();
    assert_eq!(
        ok.identity.principal.as_str(),
        format!("oidc:{}#eve", h.issuer)
    );
    h.forge(f);
    match sign_in(&h, &rp).await {
        Err(Error::Rejected(r)) => {
            // Nothing secret in the message.
            let msg = Error::Rejected(r.clone()).to_string();
            assert!(!msg.contains("hostile-access-token"), "{msg}");
            r
        }
        other => panic!("{f:?}: {other:?}"),
    }
}

#[tokio::test]
async fn wrong_issuer() {
    let r = refused(Forgery::WrongIssuer).await;
    assert!(
        matches!(&r, TokenRejected::WrongIssuer(m) if m.contains("evil.example")),
        "{r}"
    );
}

#[tokio::test]
async fn wrong_audience() {
    let r = refused(Forgery::WrongAudience).await;
    assert!(
        matches!(&r, TokenRejected::WrongAudience(m) if m.contains("someone-else")),
        "{r}"
    );
}

#[tokio::test]
async fn expired() {
    assert!(matches!(
        refused(Forgery::Expired).await,
        TokenRejected::Expired(_)
    ));
}

#[tokio::test]
async fn not_yet_valid() {
    assert!(matches!(
        refused(Forgery::NotYetValid).await,
        TokenRejected::NotYetValid { .. }
    ));
}

#[tokio::test]
async fn issued_in_the_future_or_long_ago() {
    assert!(matches!(
        refused(Forgery::IssuedInFuture).await,
        TokenRejected::IssuedInFuture { .. }
    ));
    assert!(matches!(
        refused(Forgery::Stale).await,
        TokenRejected::Stale { .. }
    ));
}

#[tokio::test]
async fn bad_signature() {
    assert!(matches!(
        refused(Forgery::BadSignature).await,
        TokenRejected::BadSignature(_)
    ));
}

#[tokio::test]
async fn alg_none() {
    assert_eq!(refused(Forgery::AlgNone).await, TokenRejected::Unsigned);
}

#[tokio::test]
async fn hs256_signed_with_the_public_key() {
    let r = refused(Forgery::Hs256WithPublicKey).await;
    assert!(
        matches!(&r, TokenRejected::DisallowedAlgorithm(m) if m.contains("HS256")),
        "{r}"
    );
}

#[tokio::test]
async fn minted_for_another_client() {
    let r = refused(Forgery::OtherClient).await;
    assert_eq!(
        r,
        TokenRejected::WrongAuthorizedParty {
            expected: support::hostile::CLIENT_ID.into(),
            found: Some("other-client".into())
        }
    );
    let r = refused(Forgery::SeveralAudiencesNoAzp).await;
    assert!(
        matches!(r, TokenRejected::WrongAuthorizedParty { found: None, .. }),
        "{r}"
    );
}

#[tokio::test]
async fn wrong_or_missing_nonce() {
    assert!(
        matches!(refused(Forgery::WrongNonce).await, TokenRejected::WrongNonce(m) if m.contains("mismatch"))
    );
    assert!(
        matches!(refused(Forgery::MissingNonce).await, TokenRejected::WrongNonce(m) if m.contains("missing"))
    );
}

#[tokio::test]
async fn a_kid_not_in_the_key_set_fetches_it_once_then_is_rate_limited() {
    let h = Hostile::start().await;
    let rp = rp_for(&h, options()).await;
    assert_eq!(h.jwks_fetches(), 1, "discovery fetched the key set");
    h.forge(Forgery::UnknownKid);
    let e = sign_in(&h, &rp).await.unwrap_err();
    assert!(
        matches!(&e, Error::Rejected(TokenRejected::UnknownKey { kid: Some(k) }) if k == "k9"),
        "{e}"
    );
    // Fetched again once, which did not help (the key set has no k9)...
    let fetches = h.jwks_fetches();
    assert_eq!(fetches, 2);
    // ...and not again for a while, however many such tokens come.
    for _ in 0..3 {
        let e = sign_in(&h, &rp).await.unwrap_err();
        assert!(
            matches!(e, Error::Rejected(TokenRejected::UnknownKey { .. })),
            "{e}"
        );
    }
    assert_eq!(h.jwks_fetches(), fetches);
    assert!(matches!(
        rp.status(),
        ProviderStatus::Ready {
            key_refreshes: 1,
            ..
        }
    ));
}

#[tokio::test]
async fn discovery_that_cannot_be_trusted_leaves_sign_in_unavailable() {
    let h = Hostile::start().await;
    for (mode, needle) in [
        (Discovery::Missing, "404"),
        (Discovery::OtherIssuer, "login.other.example"),
        (Discovery::PlainHttpTokenEndpoint, "not https"),
    ] {
        h.discover_as(mode);
        let rp = rp_for(&h, options()).await;
        let ProviderStatus::Unavailable { reason, .. } = rp.status() else {
            panic!("{mode:?}: {:?}", rp.status())
        };
        assert!(reason.contains(needle), "{mode:?}: {reason}");
        let e = rp
            .start_login(LoginRequest::Portal {
                return_to: ReturnPath::parse("/").unwrap(),
            })
            .await
            .unwrap_err();
        assert!(matches!(e, Error::ProviderUnavailable { .. }), "{e}");
    }
}

#[tokio::test]
async fn a_provider_certificate_from_another_ca_is_refused() {
    let h = Hostile::start().await;
    let other_ca = jitgate_oidc_testprovider::TestCa::new().unwrap();
    let cfg = support::config(&h.issuer, Some(&h.secret_file), other_ca.ca_file());
    let rp = RelyingParty::start(&cfg, options()).await.unwrap();
    let ProviderStatus::Unavailable { reason, .. } = rp.status() else {
        panic!("{:?}", rp.status())
    };
    assert!(
        reason.contains("certificate") || reason.contains("UnknownIssuer"),
        "{reason}"
    );
    assert_eq!(h.jwks_fetches(), 0);
}
