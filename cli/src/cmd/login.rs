//! `jit login`: sign in with the organisation's identity provider. The controller brokers
//! every flow; `jit` never sees a provider's token, only the controller's session
//! credential, which it keeps in `session.json` beside the configuration (mode 0600).
//!
//! - Default: the authorization code flow with PKCE and a loopback redirect (RFC 8252):
//!   `jit` listens on `127.0.0.1:0`, opens the browser at the provider (`--no-browser`
//!   prints the URL), takes the one redirect back, checks its `state`, and hands the code to
//!   the controller.
//! - `--device`: the device authorization grant (RFC 8628) for hosts without a browser: a
//!   code to enter on another device. Opt-in: device codes can be phished.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use clap::Args;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use jitgate_api::{CallbackBody, DevicePollBody, LoginBody, SessionGranted};
use tokio::sync::mpsc;

use crate::client::{Client, Reply};
use crate::cmd::whoami;
use crate::config::{SavedSession, Settings, save_session};
use crate::exit::{Fail, R, TIMEOUT};
use crate::output::Out;
use crate::text::safe;

/// How long the browser sign-in may take (login page, MFA, consent).
const BROWSER_LIMIT: Duration = Duration::from_secs(10 * 60);

/// What the browser shows once it is back (static; nothing from the request).
const DONE_PAGE: &str =
    "Signed in to jitgate. You can close this window and return to the terminal.\n";

#[derive(Args)]
pub struct LoginArgs {
    /// Print the sign-in URL instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// Sign in with a code entered on another device (for hosts without a browser).
    #[arg(long, conflicts_with = "no_browser")]
    device: bool,
}

pub async fn run(c: &Client, s: &Settings, a: &LoginArgs, out: Out) -> R<()> {
    let path = s
        .session_path
        .clone()
        .ok_or_else(|| Fail::usage("no place for the session: set HOME, JIT_CONFIG or --config"))?;
    let session = if a.device {
        device(c).await?
    } else {
        browser(c, a.no_browser).await?
    };
    save_session(
        &path,
        &SavedSession {
            url: s.url.clone(),
            credential: session.credential.clone(),
            expires_utc: session.whoami.session_ends_utc.clone(),
        },
    )?;
    if out.json {
        // The credential stays in the file: never on a terminal or in a pipe.
        println!(
            "{}",
            serde_json::to_string_pretty(&session.whoami)
                .map_err(|e| Fail::error(e.to_string()))?
        );
        return Ok(());
    }
    println!("Signed in.");
    whoami::print(&session.whoami);
    Ok(())
}

/// The code flow through the browser and a loopback listener.
async fn browser(c: &Client, no_browser: bool) -> R<Reply<SessionGranted>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Fail::error(format!("listening on 127.0.0.1 for the sign-in: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Fail::error(e.to_string()))?
        .port();
    let start = c
        .login_start(&LoginBody {
            redirect_uri: format!("http://127.0.0.1:{port}/callback"),
        })
        .await?;
    let url = &start.authorize_url;
    if no_browser || !open_browser(url) {
        eprintln!(
            "Open this address in a browser to sign in:\n\n  {}\n",
            safe(url)
        );
    } else {
        eprintln!(
            "Your browser was opened to sign in. If it did not open, visit:\n\n  {}\n",
            safe(url)
        );
    }
    let query = callback(listener).await?;
    let cb = parse_query(&query);
    if cb.state.as_deref() != Some(start.state.as_str()) {
        return Err(Fail::new(
            crate::exit::UNAUTHENTICATED,
            "the browser came back from another sign-in (state mismatch): run `jit login` again",
        ));
    }
    c.login_finish(&CallbackBody {
        handle: start.handle.clone(),
        ..cb
    })
    .await
}

/// The callback's parameters, as received.
fn parse_query(query: &str) -> CallbackBody {
    let mut cb = CallbackBody::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match k.as_ref() {
            "code" => &mut cb.code,
            "state" => &mut cb.state,
            "iss" => &mut cb.iss,
            "error" => &mut cb.error,
            "error_description" => &mut cb.error_description,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v.into_owned());
        }
    }
    cb
}

/// Serves the loopback listener until the browser arrives at `/callback`; its query.
async fn callback(listener: tokio::net::TcpListener) -> R<String> {
    let (tx, mut rx) = mpsc::channel::<String>(1);
    let deadline = tokio::time::Instant::now() + BROWSER_LIMIT;
    loop {
        tokio::select! {
            q = rx.recv() => {
                return q.ok_or_else(|| Fail::error("the sign-in listener stopped"));
            }
            a = listener.accept() => {
                let Ok((sock, _)) = a else { continue };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        async move { Ok::<_, Infallible>(answer(&req, &tx)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Fail::new(TIMEOUT, "the browser sign-in did not come back within 10 minutes: run `jit login` again"));
            }
        }
    }
}

fn answer(req: &Request<Incoming>, tx: &mpsc::Sender<String>) -> Response<String> {
    let page = |status, text: &str| {
        let mut r = Response::new(text.to_string());
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/callback" {
        return page(StatusCode::NOT_FOUND, "not found\n");
    }
    let _ = tx.try_send(req.uri().query().unwrap_or_default().to_string());
    page(StatusCode::OK, DONE_PAGE)
}

/// Opens the default browser; false if none could be started.
fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// The device flow: show the code, poll until the person approves.
async fn device(c: &Client) -> R<Reply<SessionGranted>> {
    let start = c.device_start().await?;
    match &start.verification_uri_complete {
        Some(full) => eprintln!(
            "To sign in, open {} and enter the code {}\n(or open {})",
            safe(&start.verification_uri),
            safe(&start.user_code),
            safe(full)
        ),
        None => eprintln!(
            "To sign in, open {} and enter the code {}",
            safe(&start.verification_uri),
            safe(&start.user_code)
        ),
    }
    eprintln!("Check that the page asks for this code before you approve; waiting...");
    let deadline = Instant::now() + Duration::from_secs(start.expires_in.max(1));
    let body = DevicePollBody {
        handle: start.handle.clone(),
    };
    loop {
        if let Some(s) = c.device_poll(&body).await? {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(Fail::new(
                TIMEOUT,
                "the code expired before it was approved: run `jit login --device` again",
            ));
        }
        // The controller long-polls; pause a little in case it answered at once.
        tokio::time::sleep(Duration::from_secs(start.interval.clamp(1, 5))).await;
    }
}
