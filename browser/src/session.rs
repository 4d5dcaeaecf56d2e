//! One browser: a WebDriver session in a fresh Chromium, and what a page test does with it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::BrowserError;
use crate::axe::{AxeViolation, RUN, RunResult, ensure_axe_installed};
use crate::driver::{Driver, chromium_path};
use crate::headers::{HeaderPolicy, Headers, security_header_problems};
use crate::tls::spki_sha256_base64;

/// How long waits for text, URLs and elements last by default: generous, for a busy 2-core
/// machine running several suites at once.
const WAIT: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(200);

const RESOLVER_RULES: &str = "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, \
    EXCLUDE ::1, EXCLUDE 198.51.100.*, EXCLUDE 203.0.113.*, EXCLUDE 2001:db8:*";

/// Records every Content-Security-Policy violation of the document, installed before any of
/// its own scripts run (so a violation during load is seen too).
const CSP_LISTENER: &str = r#"
window.__jitgateCsp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__jitgateCsp.push(`${e.effectiveDirective} blocked ${e.blockedURI || '(inline)'} at ${e.sourceFile || e.documentURI}:${e.lineNumber} ${e.sample || ''}`);
});
"#;

/// How to start a [`Browser`].
#[derive(Clone, Debug)]
pub struct BrowserOptions {
    /// Names the screenshot directory (the test's name, usually).
    pub name: String,
    /// PEM certificates whose public keys the browser accepts (the controller's, the test
    /// provider's): each exactly, nothing else.
    pub trust: Vec<PathBuf>,
    /// Run inside this network namespace (`/run/netns/NAME`; needs root). None: here.
    pub netns: Option<PathBuf>,
    /// Origins (`https://host:port`) whose documents [`Browser::checkpoint`] holds to
    /// `header_policy`, and whose other responses must carry `nosniff`.
    pub check_headers: Vec<String>,
    pub header_policy: HeaderPolicy,
    /// Problems (substrings) that never fail a check: noise of pages not under test, such as
    /// a third party's missing favicon.
    pub ignore: Vec<String>,
    pub window: (u32, u32),
    /// Default wait for [`Browser::wait_for_text`] and friends.
    pub wait: Duration,
}

impl BrowserOptions {
    pub fn new(name: &str) -> BrowserOptions {
        BrowserOptions {
            name: name.to_string(),
            trust: vec![],
            netns: None,
            check_headers: vec![],
            header_policy: HeaderPolicy::default(),
            ignore: vec![],
            window: (1280, 900),
            wait: WAIT,
        }
    }

    pub fn trust(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.trust.push(pem_file.into());
        self
    }

    pub fn netns(mut self, ns: impl Into<PathBuf>) -> Self {
        self.netns = Some(ns.into());
        self
    }

    pub fn check_headers_of(mut self, origin: &str) -> Self {
        self.check_headers
            .push(origin.trim_end_matches('/').to_string());
        self
    }

    /// Never fail on problems containing `substring` (see [`BrowserOptions::ignore`]).
    pub fn ignore(mut self, substring: &str) -> Self {
        self.ignore.push(substring.to_string());
        self
    }

    pub fn header_policy(mut self, policy: HeaderPolicy) -> Self {
        self.header_policy = policy;
        self
    }
}

/// One entry of the browser's console log.
#[derive(Clone, Debug)]
pub struct ConsoleEntry {
    /// SEVERE, WARNING, INFO, DEBUG.
    pub level: String,
    /// console-api, network, security, javascript, ...
    pub source: String,
    pub message: String,
}

impl ConsoleEntry {
    /// An error, or any report of the security source (CSP, mixed content) above INFO.
    pub fn is_problem(&self) -> bool {
        self.level == "SEVERE" || (self.source == "security" && self.level == "WARNING")
    }
}

/// A response the browser received (from its performance log).
#[derive(Clone, Debug)]
pub struct SeenResponse {
    pub url: String,
    pub status: u16,
    /// Document, Script, Stylesheet, Image, XHR, Fetch, ...
    pub kind: String,
    pub headers: Headers,
}

/// Where screenshots go: `JIT_SCREENSHOT_DIR`, else `$CARGO_TARGET_DIR/portal-screenshots`,
/// else the workspace's `target/portal-screenshots`.
pub fn screenshot_root() -> PathBuf {
    if let Some(d) = std::env::var_os("JIT_SCREENSHOT_DIR") {
        return PathBuf::from(d);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("portal-screenshots");
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .unwrap_or(crate_dir)
        .join("target/portal-screenshots")
}

#[derive(Default)]
struct State {
    step: u32,
    /// Console errors a test announced (substrings); each must appear by the next check.
    expected: Vec<String>,
    /// Everything the console said so far, for failure messages.
    history: Vec<ConsoleEntry>,
    /// Responses read from the performance log and not yet checked.
    responses: Vec<SeenResponse>,
    /// Request URLs by DevTools request id, to name a failed load.
    requests: std::collections::HashMap<String, String>,
    /// HTTP statuses by DevTools request id.
    statuses: std::collections::HashMap<String, u64>,
    /// Loads that failed (certificate, connection, blocked) and not yet reported.
    failures: Vec<String>,
}

/// A headless Chromium under test. Dropping it kills the browser (see the crate docs).
pub struct Browser {
    // Dropped before the driver: the session's connection first, then the processes.
    client: Client,
    driver: Driver,
    opts: BrowserOptions,
    axe: String,
    shots: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Browser({}, {})", self.opts.name, self.driver.url)
    }
}

/// A chromedriver endpoint outside the W3C set: the legacy log (`se/log`) and the DevTools
/// bridge (`goog/cdp/execute`).
#[derive(Debug)]
struct Extension {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for Extension {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

fn cmd_err(
    what: impl std::fmt::Display,
) -> impl FnOnce(fantoccini::error::CmdError) -> BrowserError {
    move |e| BrowserError(format!("{what}: {e}"))
}

/// An XPath string literal for any text.
fn xpath_literal(s: &str) -> String {
    if !s.contains('"') {
        format!("\"{s}\"")
    } else if !s.contains('\'') {
        format!("'{s}'")
    } else {
        let parts: Vec<String> = s.split('"').map(|p| format!("\"{p}\"")).collect();
        format!("concat({})", parts.join(", '\"', "))
    }
}

/// A step name as a file name.
fn file_name(step: &str) -> String {
    step.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium (empty profile) and opens a session.
    pub async fn start(opts: BrowserOptions) -> Result<Browser, BrowserError> {
        let axe_file = tokio::task::spawn_blocking(ensure_axe_installed)
            .await
            .map_err(|e| BrowserError::new("npm install task", e))??;
        let axe = std::fs::read_to_string(&axe_file)
            .map_err(|e| BrowserError::new(axe_file.display(), e))?;
        let mut spki = vec![];
        for cert in &opts.trust {
            spki.push(spki_sha256_base64(cert)?);
        }
        let driver = Driver::start(opts.netns.as_deref()).await?;
        let mut args = vec![
            "--headless".to_string(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            // No traffic of Chromium's own: this machine reaches no outside host, and tests
            // send only to loopback and their own namespaces.
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--disable-default-apps".into(),
            "--disable-domain-reliability".into(),
            "--no-pings".into(),
            "--dns-prefetch-disable".into(),
            "--disable-features=Translate,OptimizationHints,MediaRouter,PasswordLeakDetection,AutofillServerCommunication,InterestFeedContentSuggestions".into(),
            // No name resolves and no address but loopback and the documentation ranges of
            // the test namespaces is reached, whatever a page links to.
            format!("--host-resolver-rules={RESOLVER_RULES}"),
            "--disable-dev-shm-usage".into(),
            "--lang=en-US".into(),
            format!("--window-size={},{}", opts.window.0, opts.window.1),
            format!("--user-data-dir={}", driver.profile().display()),
        ];
        if nix::unistd::geteuid().is_root() {
            // Chromium's sandbox refuses to run as root.
            args.push("--no-sandbox".into());
        }
        if !spki.is_empty() {
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                spki.join(",")
            ));
        }
        let caps = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": false,
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium_path(),
                "args": args,
                "perfLoggingPrefs": { "enableNetwork": true, "enablePage": false },
            },
            "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
        });
        let Value::Object(caps) = caps else {
            return Err(BrowserError("capabilities are not an object".into()));
        };
        let caps: Capabilities = caps;
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .map_err(|e| {
                BrowserError(format!(
                    "starting Chromium through chromedriver: {e}\n{}",
                    driver.log_text()
                ))
            })?;
        let shots = screenshot_root().join(file_name(&opts.name));
        // Screenshots of an earlier run of the same test would mix with this one's.
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).map_err(|e| BrowserError::new(shots.display(), e))?;
        let b = Browser {
            client,
            driver,
            opts,
            axe,
            shots,
            state: Mutex::new(State::default()),
        };
        b.cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": CSP_LISTENER }),
        )
        .await?;
        b.client
            .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(120)),
                Some(Duration::ZERO),
            ))
            .await
            .map_err(cmd_err("timeouts"))?;
        // What Chromium's own start page did (its new-tab page tries a remote one, which
        // resolves to nothing here) is no test's page: start from an empty page, clean.
        b.goto("about:blank").await?;
        b.log("browser").await?;
        b.log("performance").await?;
        Ok(b)
    }

    /// The WebDriver client, for anything this harness does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn cdp(&self, cmd: &str, params: Value) -> Result<Value, BrowserError> {
        self.client
            .issue_cmd(Extension {
                path: "goog/cdp/execute",
                body: json!({ "cmd": cmd, "params": params }),
            })
            .await
            .map_err(cmd_err(format!("DevTools {cmd}")))
    }

    async fn log(&self, kind: &str) -> Result<Vec<Value>, BrowserError> {
        let v = self
            .client
            .issue_cmd(Extension {
                path: "se/log",
                body: json!({ "type": kind }),
            })
            .await
            .map_err(cmd_err(format!("reading the {kind} log")))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        self.client
            .goto(url)
            .await
            .map_err(cmd_err(format!("opening {url}")))
    }

    pub async fn url(&self) -> Result<String, BrowserError> {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .map_err(cmd_err("current URL"))
    }

    pub async fn title(&self) -> Result<String, BrowserError> {
        self.client.title().await.map_err(cmd_err("title"))
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, BrowserError> {
        self.client
            .execute(script, args)
            .await
            .map_err(cmd_err("script"))
    }

    /// The page's text as a person sees it (`document.body.innerText`).
    pub async fn text(&self) -> Result<String, BrowserError> {
        let v = self
            .execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The page's markup as it is now.
    pub async fn source(&self) -> Result<String, BrowserError> {
        self.client.source().await.map_err(cmd_err("page source"))
    }

    /// Waits until the page's text contains `needle` (the default wait).
    pub async fn wait_for_text(&self, needle: &str) -> Result<(), BrowserError> {
        self.wait_for_text_within(needle, self.opts.wait).await
    }

    pub async fn wait_for_text_within(
        &self,
        needle: &str,
        limit: Duration,
    ) -> Result<(), BrowserError> {
        let end = Instant::now() + limit;
        loop {
            // A page being replaced answers with an error for a moment: poll on.
            let text = self.text().await.unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if Instant::now() > end {
                let url = self.url().await.unwrap_or_default();
                let shot = self.screenshot("timeout").await.ok();
                return Err(BrowserError(format!(
                    "no {needle:?} within {limit:?} at {url} (screenshot {shot:?}); the page says:\n{text}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the URL starts with `prefix` (the default wait).
    pub async fn wait_for_url(&self, prefix: &str) -> Result<String, BrowserError> {
        let end = Instant::now() + self.opts.wait;
        loop {
            let url = self.url().await.unwrap_or_default();
            if url.starts_with(prefix) {
                return Ok(url);
            }
            if Instant::now() > end {
                // What the page says is what tells a hung page from an error page.
                let text = self.text().await.unwrap_or_default();
                let shot = self.screenshot("timeout").await.ok();
                return Err(BrowserError(format!(
                    "the URL did not become {prefix}... within {:?}: {url} (screenshot {shot:?}); the page says:\n{text}",
                    self.opts.wait
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for an element matching the CSS selector.
    pub async fn find(&self, css: &str) -> Result<fantoccini::elements::Element, BrowserError> {
        let end = Instant::now() + self.opts.wait;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => return Ok(e),
                Err(e) if Instant::now() > end => {
                    let url = self.url().await.unwrap_or_default();
                    return Err(BrowserError(format!("no element {css} at {url}: {e}")));
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Types `value` into the field matching the CSS selector (cleared first), key by key.
    pub async fn fill(&self, css: &str, value: &str) -> Result<(), BrowserError> {
        let e = self.find(css).await?;
        e.clear()
            .await
            .map_err(cmd_err(format!("clearing {css}")))?;
        e.send_keys(value)
            .await
            .map_err(cmd_err(format!("typing into {css}")))
    }

    /// Types `value` into the field whose `<label>` says `label` (as a person finds it).
    pub async fn fill_label(&self, label: &str, value: &str) -> Result<(), BrowserError> {
        let lit = xpath_literal(label);
        let l = self
            .client
            .find(Locator::XPath(&format!(
                "//label[normalize-space(.)={lit}]"
            )))
            .await
            .map_err(cmd_err(format!("no label {label:?}")))?;
        let field = match l.attr("for").await.map_err(cmd_err("label"))? {
            Some(id) => self.client.find(Locator::Id(&id)).await,
            None => l.find(Locator::Css("input, textarea, select")).await,
        }
        .map_err(cmd_err(format!("no field for the label {label:?}")))?;
        field.clear().await.map_err(cmd_err("clearing"))?;
        field
            .send_keys(value)
            .await
            .map_err(cmd_err(format!("typing into {label:?}")))
    }

    /// Clicks the element matching the CSS selector.
    pub async fn click(&self, css: &str) -> Result<(), BrowserError> {
        self.find(css)
            .await?
            .click()
            .await
            .map_err(cmd_err(format!("clicking {css}")))
    }

    /// Clicks the button whose text (or value) is `text`.
    pub async fn click_button(&self, text: &str) -> Result<(), BrowserError> {
        let lit = xpath_literal(text);
        let xpath = format!(
            "//button[normalize-space(.)={lit}] | //input[(@type='submit' or @type='button') and @value={lit}]"
        );
        self.client
            .find(Locator::XPath(&xpath))
            .await
            .map_err(cmd_err(format!("no button {text:?}")))?
            .click()
            .await
            .map_err(cmd_err(format!("clicking {text:?}")))
    }

    /// Follows the link whose text is `text`.
    pub async fn click_link(&self, text: &str) -> Result<(), BrowserError> {
        self.client
            .find(Locator::LinkText(text))
            .await
            .map_err(cmd_err(format!("no link {text:?}")))?
            .click()
            .await
            .map_err(cmd_err(format!("clicking {text:?}")))
    }

    /// Saves a screenshot of the viewport as `NN-step.png` in this browser's directory.
    pub async fn screenshot(&self, step: &str) -> Result<PathBuf, BrowserError> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(cmd_err("screenshot"))?;
        let n = {
            let mut s = self.state();
            s.step += 1;
            s.step
        };
        let path = self.shots.join(format!("{n:02}-{}.png", file_name(step)));
        std::fs::write(&path, png).map_err(|e| BrowserError::new(path.display(), e))?;
        Ok(path)
    }

    /// The process group of chromedriver and its Chromium (killed when the browser drops).
    pub fn process_group(&self) -> i32 {
        self.driver.pgid.as_raw()
    }

    /// The processes of that group now (pid, command name): chromedriver and Chromium's.
    pub fn processes(&self) -> Vec<(u32, String)> {
        self.driver.processes()
    }

    /// The directory this browser's screenshots go to.
    pub fn screenshot_dir(&self) -> &Path {
        &self.shots
    }

    /// Announces an error the test causes on purpose (a substring of the console message or
    /// failed load, such as "status of 403"): the next [`Browser::assert_clean`] accepts the
    /// problems containing it, and fails if none appeared.
    pub fn expect_console_error(&self, substring: &str) {
        self.state().expected.push(substring.to_string());
    }

    /// The console entries since the last call (each at most once).
    pub async fn console(&self) -> Result<Vec<ConsoleEntry>, BrowserError> {
        let raw = self.log("browser").await?;
        let entries: Vec<ConsoleEntry> = raw
            .iter()
            .map(|e| ConsoleEntry {
                level: e["level"].as_str().unwrap_or_default().to_string(),
                source: e["source"].as_str().unwrap_or_default().to_string(),
                message: e["message"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        self.state().history.extend(entries.iter().cloned());
        Ok(entries)
    }

    /// Everything the console said since the browser started.
    pub fn console_history(&self) -> Vec<ConsoleEntry> {
        self.state().history.clone()
    }

    /// Console errors, Content-Security-Policy violations and failed loads (a refused
    /// certificate shows only as one) since the last check, in words (empty: clean), less the
    /// console errors announced with [`Browser::expect_console_error`].
    pub async fn problems(&self) -> Result<Vec<String>, BrowserError> {
        let entries = self.console().await?;
        let csp = self
            .execute("return (window.__jitgateCsp || []).splice(0);", vec![])
            .await?;
        self.read_responses().await?;
        let (expected, failures) = {
            let mut st = self.state();
            (
                std::mem::take(&mut st.expected),
                std::mem::take(&mut st.failures),
            )
        };
        let lines = failures
            .into_iter()
            .chain(
                entries
                    .iter()
                    .filter(|e| e.is_problem())
                    .map(|e| format!("console {} ({}): {}", e.level, e.source, e.message)),
            )
            .chain(csp.as_array().into_iter().flatten().map(|v| {
                format!(
                    "Content-Security-Policy violation: {}",
                    v.as_str().unwrap_or_default()
                )
            }));
        let mut seen = vec![false; expected.len()];
        let mut out = vec![];
        for line in lines {
            if self.opts.ignore.iter().any(|i| line.contains(i.as_str())) {
                continue;
            }
            match expected.iter().position(|x| line.contains(x.as_str())) {
                Some(i) => seen[i] = true,
                None => out.push(line),
            }
        }
        for (x, s) in expected.iter().zip(seen) {
            if !s {
                out.push(format!("the expected error {x:?} did not appear"));
            }
        }
        Ok(out)
    }

    /// Fails the test on any console error, CSP violation or failed load since the last
    /// check.
    pub async fn assert_clean(&self) {
        match self.problems().await {
            Ok(p) if p.is_empty() => {}
            Ok(p) => panic!(
                "{}: the browser reported problems at {}:\n  {}",
                self.opts.name,
                self.url().await.unwrap_or_default(),
                p.join("\n  ")
            ),
            Err(e) => panic!("{}: reading the browser's console: {e}", self.opts.name),
        }
    }

    /// axe-core's violations on the current page (every impact).
    pub async fn axe(&self) -> Result<Vec<AxeViolation>, BrowserError> {
        let loaded = self
            .execute("return typeof window.axe === 'object';", vec![])
            .await?;
        if loaded != Value::Bool(true) {
            self.execute(&format!("{}\nreturn true;", self.axe), vec![])
                .await?;
        }
        let v = self
            .client
            .execute_async(RUN, vec![])
            .await
            .map_err(cmd_err("running axe-core"))?;
        let r: RunResult = serde_json::from_str(v.as_str().unwrap_or_default())
            .map_err(|e| BrowserError::new(format!("axe-core's answer {v}"), e))?;
        match (r.violations, r.error) {
            (_, Some(e)) => Err(BrowserError(format!("axe-core failed: {e}"))),
            (Some(v), None) => Ok(v),
            (None, None) => Err(BrowserError("axe-core answered nothing".into())),
        }
    }

    /// Fails the test on serious or critical axe-core violations of the current page.
    pub async fn assert_accessible(&self) {
        let url = self.url().await.unwrap_or_default();
        match self.axe().await {
            Ok(v) => {
                let bad: Vec<String> = v
                    .iter()
                    .filter(|v| v.is_serious())
                    .map(|v| v.to_string())
                    .collect();
                assert!(
                    bad.is_empty(),
                    "{}: axe-core at {url}:\n  {}",
                    self.opts.name,
                    bad.join("\n  ")
                );
            }
            Err(e) => panic!("{}: axe-core at {url}: {e}", self.opts.name),
        }
    }

    /// The responses the browser received since the last call (main documents, scripts,
    /// styles, fetches), with their headers.
    pub async fn responses(&self) -> Result<Vec<SeenResponse>, BrowserError> {
        self.read_responses().await?;
        Ok(std::mem::take(&mut self.state().responses))
    }

    async fn read_responses(&self) -> Result<(), BrowserError> {
        let raw = self.log("performance").await?;
        let mut seen = vec![];
        for e in raw {
            let Some(msg) = e["message"].as_str() else {
                continue;
            };
            let Ok(m) = serde_json::from_str::<Value>(msg) else {
                continue;
            };
            let m = &m["message"];
            let p = &m["params"];
            let id = p["requestId"].as_str().unwrap_or_default().to_string();
            match m["method"].as_str() {
                Some("Network.requestWillBeSent") => {
                    let url = p["request"]["url"].as_str().unwrap_or_default();
                    self.state().requests.insert(id, url.to_string());
                    continue;
                }
                Some("Network.loadingFailed") => {
                    let error = p["errorText"].as_str().unwrap_or_default();
                    // A navigation that replaced a load in flight is no failure.
                    if p["canceled"] != true && error != "net::ERR_ABORTED" {
                        let mut st = self.state();
                        let url = st.requests.get(&id).cloned().unwrap_or_default();
                        let blocked = p["blockedReason"].as_str().unwrap_or_default();
                        let status = st
                            .statuses
                            .get(&id)
                            .map(|s| format!(" (status of {s})"))
                            .unwrap_or_default();
                        st.failures.push(format!(
                            "loading {url} ({}) failed: {error} {blocked}{status}",
                            p["type"].as_str().unwrap_or_default()
                        ));
                    }
                    continue;
                }
                Some("Network.responseReceived") => {}
                _ => continue,
            }
            let r = &p["response"];
            if let Some(status) = r["status"].as_u64() {
                self.state().statuses.insert(id.clone(), status);
            }
            let headers: Headers = r["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        v.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            seen.push(SeenResponse {
                url: r["url"].as_str().unwrap_or_default().to_string(),
                status: r["status"].as_u64().unwrap_or_default() as u16,
                kind: p["type"].as_str().unwrap_or_default().to_string(),
                headers,
            });
        }
        self.state().responses.extend(seen);
        Ok(())
    }

    /// Header problems of the responses from the checked origins since the last call.
    pub async fn header_problems(&self) -> Result<Vec<String>, BrowserError> {
        let mut out = vec![];
        for r in self.responses().await? {
            let ours = self.opts.check_headers.iter().any(|o| {
                r.url == *o
                    || r.url.starts_with(&format!("{o}/"))
                    || r.url.starts_with(&format!("{o}?"))
            });
            if !ours {
                continue;
            }
            if r.kind == "Document" {
                for p in security_header_problems(&r.headers, &self.opts.header_policy) {
                    out.push(format!("{} {}: {p}", r.status, r.url));
                }
            } else if r.headers.get("x-content-type-options").map(|v| v.trim()) != Some("nosniff") {
                out.push(format!("{} {} ({}): no nosniff", r.status, r.url, r.kind));
            }
        }
        Ok(out)
    }

    /// After each page: a screenshot named `step`, then fails the test on console errors,
    /// CSP violations, serious or critical axe-core violations, and missing security headers
    /// on the checked origins' responses.
    pub async fn checkpoint(&self, step: &str) {
        if let Err(e) = self.screenshot(step).await {
            panic!("{}: screenshot {step}: {e}", self.opts.name);
        }
        let headers = match self.header_problems().await {
            Ok(h) => h,
            Err(e) => panic!("{}: {step}: {e}", self.opts.name),
        };
        assert!(
            headers.is_empty(),
            "{}: {step}: security headers:\n  {}",
            self.opts.name,
            headers.join("\n  ")
        );
        self.assert_accessible().await;
        // Last: axe itself must not have made the page report anything.
        self.assert_clean().await;
    }

    /// Ends the WebDriver session (Chromium exits), then the processes go with the driver.
    pub async fn close(self) -> Result<(), BrowserError> {
        let Browser { client, driver, .. } = self;
        let r = client.close().await.map_err(cmd_err("closing the session"));
        drop(driver);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xpath_literals_quote_anything() {
        assert_eq!(xpath_literal("Sign in"), "\"Sign in\"");
        assert_eq!(xpath_literal("say \"hi\""), "'say \"hi\"'");
        assert_eq!(
            xpath_literal("it's \"x\""),
            "concat(\"it's \", '\"', \"x\", '\"', \"\")"
        );
    }

    #[test]
    fn step_names_are_file_names() {
        assert_eq!(file_name("sign in/../x"), "sign_in____x");
    }
}
