//! The controller's HTTPS API, one typed method per call. Every response is read once: a
//! success into the `jitgate-api` type of its body (kept with the JSON as received, which
//! `--json` prints), a refusal into the API's error body (code and message), whose exit code
//! [`crate::exit::refused`] chooses.

use std::ops::Deref;
use std::time::Duration;

use jitgate_api::{
    ActivityEntry, ActivityExport, ActivityQuery, Agent, AgentAuditVerify, AgentRecord,
    ApprovalEntry, ApprovalsQuery, AssignBody, Assignment, Checkpoint, ComplianceHistoryQuery,
    ComplianceReport, Connection, DeadCount, DeadDeliveries, DecisionBody, ErrorBody, HistoryQuery,
    InitiateBody, KeyStatus, List, NewSink, PolicyBody, PolicyView, RemediateBody, ReportQuery,
    RequestView, ScanBody, ScanSummary, SecretBody, SinkInfo, SinkStatus, SinkTestResult,
    VerifyReport, ViewQuery, Vm, VmDetail,
};
use jitgate_api::{ApplyBody, Document, Plan};
use jitgate_api::{
    CallbackBody, DevicePollBody, DeviceStarted, LoginBody, LoginStarted, SessionGranted, Whoami,
};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::config::Settings;
use crate::exit::{self, Fail, R};

/// The client's time limit for one call.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// A device poll: the controller waits up to about 20 s for the person.
const DEVICE_POLL_LIMIT: Duration = Duration::from_secs(60);

/// How long an evaluation with a probe may take (the controller bounds it by
/// `probe_max_seconds`): wait for it rather than give up after the usual 30 s.
const SCAN_LIMIT: Duration = Duration::from_secs(30 * 60);

pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

/// A response body: typed, and as received (for `--json`).
pub struct Reply<T> {
    body: T,
    text: String,
}

impl<T> Reply<T> {
    /// The JSON exactly as the controller sent it.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl<T> Deref for Reply<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.body
    }
}

/// Whose JIT policy: a VM's own, or a resource group's.
pub enum PolicyOf<'a> {
    Vm(&'a str),
    ResourceGroup(&'a str),
}

impl PolicyOf<'_> {
    fn segments(&self) -> [&str; 4] {
        match *self {
            PolicyOf::Vm(vm) => ["virtualMachines", vm, "jitNetworkAccessPolicies", "default"],
            PolicyOf::ResourceGroup(rg) => {
                ["resourceGroups", rg, "jitNetworkAccessPolicies", "default"]
            }
        }
    }
}

impl Client {
    pub fn new(s: &Settings) -> R<Client> {
        let base = Url::parse(&s.url)
            .map_err(|e| Fail::usage(format!("controller URL {:?}: {e}", s.url)))?;
        if base.cannot_be_a_base() {
            return Err(Fail::usage(format!(
                "controller URL {:?}: not a base URL",
                s.url
            )));
        }
        // A bundle: during a CA rotation, the old CA and the new one (docs/operations.md).
        let certs = reqwest::Certificate::from_pem_bundle(&s.ca_pem)
            .map_err(|e| Fail::usage(format!("{}: {e}", s.ca_path.display())))?;
        if certs.is_empty() {
            return Err(Fail::usage(format!(
                "{}: no certificate in it",
                s.ca_path.display()
            )));
        }
        let mut http = reqwest::Client::builder();
        for cert in certs {
            http = http.add_root_certificate(cert);
        }
        let http = http
            .https_only(true)
            .timeout(CALL_LIMIT)
            .build()
            .map_err(|e| Fail::error(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: s.token.clone(),
        })
    }

    // --- the caller, VMs, agents -------------------------------------------------------

    /// `GET /virtualMachines`
    pub async fn vms(&self) -> R<Reply<List<Vm>>> {
        self.typed(self.get(&["virtualMachines"])).await
    }

    /// `GET /virtualMachines/{vm}`
    pub async fn vm(&self, vm: &str) -> R<Reply<VmDetail>> {
        self.typed(self.get(&["virtualMachines", vm])).await
    }

    /// `GET /agents`
    pub async fn agents(&self) -> R<Reply<List<Agent>>> {
        self.typed(self.get(&["agents"])).await
    }

    /// `GET /keys`
    pub async fn keys(&self) -> R<Reply<KeyStatus>> {
        self.typed(self.get(&["keys"])).await
    }

    // --- policies -------------------------------------------------------------------------

    /// `GET .../jitNetworkAccessPolicies/default`
    pub async fn policy(&self, of: &PolicyOf<'_>) -> R<Reply<PolicyView>> {
        self.typed(self.get(&of.segments())).await
    }

    /// `PUT .../jitNetworkAccessPolicies/default`
    pub async fn put_policy(&self, of: &PolicyOf<'_>, body: &PolicyBody) -> R<Reply<PolicyView>> {
        self.typed(self.request(Method::PUT, &of.segments()).json(body))
            .await
    }

    /// `DELETE .../jitNetworkAccessPolicies/default`
    pub async fn delete_policy(&self, of: &PolicyOf<'_>) -> R<()> {
        self.send(self.request(Method::DELETE, &of.segments()))
            .await
            .map(drop)
    }

    // --- requests -------------------------------------------------------------------------

    /// `POST /jitNetworkAccessPolicies/default/initiate`
    pub async fn initiate(&self, body: &InitiateBody) -> R<Reply<RequestView>> {
        let path = ["jitNetworkAccessPolicies", "default", "initiate"];
        self.typed(self.request(Method::POST, &path).json(body))
            .await
    }

    /// `GET /requests/{id}`
    pub async fn request_view(&self, id: &str) -> R<Reply<RequestView>> {
        self.typed(self.get(&["requests", id])).await
    }

    /// `POST /requests/{id}/revoke`
    pub async fn revoke(&self, id: &str) -> R<Reply<RequestView>> {
        self.typed(self.request(Method::POST, &["requests", id, "revoke"]))
            .await
    }

    /// `POST /requests/{id}/approve|deny|cancel`
    pub async fn decide(&self, id: &str, what: &str, body: &DecisionBody) -> R<Reply<RequestView>> {
        self.typed(
            self.request(Method::POST, &["requests", id, what])
                .json(body),
        )
        .await
    }

    /// `GET /approvals` (waiting for the caller, or with `history` the report)
    pub async fn approvals(&self, q: &ApprovalsQuery) -> R<Reply<List<RequestView>>> {
        self.typed(self.get(&["approvals"]).query(q)).await
    }

    /// `GET /approvals?history=true`
    pub async fn approval_history(&self, q: &ApprovalsQuery) -> R<Reply<List<ApprovalEntry>>> {
        self.typed(self.get(&["approvals"]).query(q)).await
    }

    /// `GET /approvals?history=true&format=csv`: the report's text.
    pub async fn approvals_text(&self, q: &ApprovalsQuery) -> R<String> {
        self.send(self.get(&["approvals"]).query(q)).await
    }

    /// `GET /virtualMachines/{vm}/requests`
    pub async fn history(&self, vm: &str, q: &HistoryQuery) -> R<Reply<List<RequestView>>> {
        self.typed(self.get(&["virtualMachines", vm, "requests"]).query(q))
            .await
    }

    // --- the activity log -----------------------------------------------------------------

    /// `GET /activityLog`
    pub async fn activity(&self, q: &ActivityQuery) -> R<Reply<List<ActivityEntry>>> {
        self.typed(self.get(&["activityLog"]).query(q)).await
    }

    /// `GET /activityLog` with `format` csv or jsonl: the export's text.
    pub async fn activity_text(&self, q: &ActivityQuery) -> R<String> {
        self.send(self.get(&["activityLog"]).query(q)).await
    }

    /// `GET /activityLog/verify`
    pub async fn verify_activity(&self) -> R<Reply<VerifyReport>> {
        self.typed(self.get(&["activityLog", "verify"])).await
    }

    /// `GET /activityLog/export`
    pub async fn export_activity(&self) -> R<Reply<ActivityExport>> {
        self.typed(self.get(&["activityLog", "export"])).await
    }

    /// `POST /activityLog/checkpoints`
    pub async fn sign_checkpoint(&self) -> R<Reply<Checkpoint>> {
        self.typed(self.request(Method::POST, &["activityLog", "checkpoints"]))
            .await
    }

    // --- what the agents saw --------------------------------------------------------------

    /// `GET /virtualMachines/{vm}/connections`
    pub async fn connections(&self, vm: &str, q: &ViewQuery) -> R<Reply<List<Connection>>> {
        self.typed(self.get(&["virtualMachines", vm, "connections"]).query(q))
            .await
    }

    /// `GET /virtualMachines/{vm}/connections` with `format=csv`.
    pub async fn connections_text(&self, vm: &str, q: &ViewQuery) -> R<String> {
        self.send(self.get(&["virtualMachines", vm, "connections"]).query(q))
            .await
    }

    /// `GET /virtualMachines/{vm}/agentAudit`
    pub async fn agent_audit(&self, vm: &str, q: &ViewQuery) -> R<Reply<List<AgentRecord>>> {
        self.typed(self.get(&["virtualMachines", vm, "agentAudit"]).query(q))
            .await
    }

    /// `GET /virtualMachines/{vm}/agentAudit/verify`
    pub async fn verify_agent_audit(&self, vm: &str) -> R<Reply<AgentAuditVerify>> {
        self.typed(self.get(&["virtualMachines", vm, "agentAudit", "verify"]))
            .await
    }

    // --- compliance -----------------------------------------------------------------------

    /// `GET /compliance`
    pub async fn compliance(&self, q: &ReportQuery) -> R<Reply<ComplianceReport>> {
        self.typed(self.get(&["compliance"]).query(q)).await
    }

    /// `GET /compliance` with `format=csv`.
    pub async fn compliance_text(&self, q: &ReportQuery) -> R<String> {
        self.send(self.get(&["compliance"]).query(q)).await
    }

    /// `POST /compliance/scans` (waits for the evaluation, probe included).
    pub async fn scan(&self, body: &ScanBody) -> R<Reply<ScanSummary>> {
        let rb = self.request(Method::POST, &["compliance", "scans"]);
        self.typed(rb.json(body).timeout(SCAN_LIMIT)).await
    }

    /// `GET /compliance/history`
    pub async fn compliance_history(
        &self,
        q: &ComplianceHistoryQuery,
    ) -> R<Reply<List<ScanSummary>>> {
        self.typed(self.get(&["compliance", "history"]).query(q))
            .await
    }

    /// `GET /compliance/assignments`
    pub async fn assignments(&self) -> R<Reply<List<Assignment>>> {
        self.typed(self.get(&["compliance", "assignments"])).await
    }

    /// `POST /compliance/assignments`
    pub async fn assign(&self, body: &AssignBody) -> R<Reply<Assignment>> {
        let rb = self.request(Method::POST, &["compliance", "assignments"]);
        self.typed(rb.json(body)).await
    }

    /// `DELETE /compliance/assignments/{id}`
    pub async fn unassign(&self, id: &str) -> R<()> {
        let rb = self.request(Method::DELETE, &["compliance", "assignments", id]);
        self.send(rb).await.map(drop)
    }

    /// `POST /compliance/remediate`
    pub async fn remediate(&self, body: &RemediateBody) -> R<Reply<PolicyView>> {
        let rb = self.request(Method::POST, &["compliance", "remediate"]);
        self.typed(rb.json(body)).await
    }

    // --- policies as code ------------------------------------------------------------------

    /// `POST /apply`
    pub async fn apply(&self, body: &ApplyBody) -> R<Reply<Plan>> {
        let rb = self.request(Method::POST, &["apply"]);
        self.typed(rb.json(body)).await
    }

    /// `GET /export`
    pub async fn export(&self) -> R<Reply<Document>> {
        self.typed(self.get(&["export"])).await
    }

    // --- notifications -------------------------------------------------------------------

    /// `GET /notify/sinks`
    pub async fn sinks(&self) -> R<Reply<List<SinkInfo>>> {
        self.typed(self.get(&["notify", "sinks"])).await
    }

    /// `POST /notify/sinks`
    pub async fn add_sink(&self, body: &NewSink) -> R<Reply<SinkInfo>> {
        let rb = self.request(Method::POST, &["notify", "sinks"]);
        self.typed(rb.json(body)).await
    }

    /// `DELETE /notify/sinks/{name}`
    pub async fn remove_sink(&self, name: &str) -> R<()> {
        let rb = self.request(Method::DELETE, &["notify", "sinks", name]);
        self.send(rb).await.map(drop)
    }

    /// `POST /notify/sinks/{name}/test`
    pub async fn test_sink(&self, name: &str) -> R<Reply<SinkTestResult>> {
        let rb = self.request(Method::POST, &["notify", "sinks", name, "test"]);
        self.typed(rb).await
    }

    /// `GET /notify/status`
    pub async fn notify_status(&self) -> R<Reply<List<SinkStatus>>> {
        self.typed(self.get(&["notify", "status"])).await
    }

    /// `POST /notify/retry`
    pub async fn notify_retry(&self, body: &DeadDeliveries) -> R<Reply<DeadCount>> {
        let rb = self.request(Method::POST, &["notify", "retry"]);
        self.typed(rb.json(body)).await
    }

    /// `POST /notify/discard`
    pub async fn notify_discard(&self, body: &DeadDeliveries) -> R<Reply<DeadCount>> {
        let rb = self.request(Method::POST, &["notify", "discard"]);
        self.typed(rb.json(body)).await
    }

    /// `GET /notify/secrets`: names only.
    pub async fn secret_names(&self) -> R<Reply<List<String>>> {
        self.typed(self.get(&["notify", "secrets"])).await
    }

    /// `PUT /notify/secrets/{name}`
    pub async fn put_secret(&self, name: &str, body: &SecretBody) -> R<()> {
        let rb = self.request(Method::PUT, &["notify", "secrets", name]);
        self.send(rb.json(body)).await.map(drop)
    }

    // --- sign-in ---------------------------------------------------------------------------

    /// Whether a credential is configured (an API token or a saved session).
    pub fn has_credential(&self) -> bool {
        self.token.is_some()
    }

    /// `POST /auth/login`
    pub async fn login_start(&self, body: &LoginBody) -> R<Reply<LoginStarted>> {
        self.typed(self.anonymous(&["auth", "login"]).json(body))
            .await
    }

    /// `POST /auth/callback`
    pub async fn login_finish(&self, body: &CallbackBody) -> R<Reply<SessionGranted>> {
        self.typed(self.anonymous(&["auth", "callback"]).json(body))
            .await
    }

    /// `POST /auth/device`
    pub async fn device_start(&self) -> R<Reply<DeviceStarted>> {
        self.typed(self.anonymous(&["auth", "device"])).await
    }

    /// `POST /auth/device/poll`: None while the person has not approved (202).
    pub async fn device_poll(&self, body: &DevicePollBody) -> R<Option<Reply<SessionGranted>>> {
        let rb = self
            .anonymous(&["auth", "device", "poll"])
            .json(body)
            .timeout(DEVICE_POLL_LIMIT);
        let (status, text) = self.exchange(rb).await?;
        if status == StatusCode::ACCEPTED {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(refusal(status, &text));
        }
        let body = serde_json::from_str(&text).map_err(|e| {
            Fail::error(format!(
                "the controller's answer is not what this jit understands: {e}"
            ))
        })?;
        Ok(Some(Reply { body, text }))
    }

    /// `POST /auth/logout`
    pub async fn logout(&self) -> R<()> {
        self.send(self.request(Method::POST, &["auth", "logout"]))
            .await
            .map(drop)
    }

    /// `GET /auth/whoami`
    pub async fn whoami(&self) -> R<Reply<Whoami>> {
        self.typed(self.get(&["auth", "whoami"])).await
    }

    // --- the one way a call is made -------------------------------------------------------

    /// A POST that carries no credential (the starts of sign-in).
    fn anonymous(&self, segments: &[&str]) -> RequestBuilder {
        self.http.request(Method::POST, self.url(segments))
    }

    fn get(&self, segments: &[&str]) -> RequestBuilder {
        self.request(Method::GET, segments)
    }

    /// `{base}/api/v1/{segments}`, each segment percent-encoded (a name never changes the path).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // Always Ok: `new` refused a URL that cannot be a base.
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    /// A call with the credential, if there is one.
    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let rb = self.http.request(method, self.url(segments));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a call and reads its answer once: the status and the body.
    async fn exchange(&self, rb: RequestBuilder) -> R<(StatusCode, String)> {
        let r = rb
            .send()
            .await
            .map_err(|e| Fail::error(format!("cannot reach {}: {e}", self.base)))?;
        let status = r.status();
        let text = r
            .text()
            .await
            .map_err(|e| Fail::error(format!("reading the response: {e}")))?;
        Ok((status, text))
    }

    /// Sends a call and reads its answer once: the body of a success, or the refusal.
    async fn send(&self, rb: RequestBuilder) -> R<String> {
        let (status, text) = self.exchange(rb).await?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(refusal(status, &text))
        }
    }

    async fn typed<T: DeserializeOwned>(&self, rb: RequestBuilder) -> R<Reply<T>> {
        let text = self.send(rb).await?;
        let body = serde_json::from_str(&text).map_err(|e| {
            Fail::error(format!(
                "the controller's answer is not what this jit understands: {e}"
            ))
        })?;
        Ok(Reply { body, text })
    }
}

/// A refusal as the controller explained it (`{"error": {"code", "message"}}`), or, for a
/// body that is not the API's (a proxy in between), the HTTP status and the start of the body.
fn refusal(status: StatusCode, text: &str) -> Fail {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(b) if b.error.code == jitgate_api::ErrorCode::Unauthenticated => Fail::new(
            exit::refused(status.as_u16(), Some(&b.error.code)),
            format!(
                "{}: {} (people: `jit login`; automation: an API token in JIT_TOKEN)",
                b.error.code, b.error.message
            ),
        ),
        Ok(b) => Fail::new(
            exit::refused(status.as_u16(), Some(&b.error.code)),
            format!("{}: {}", b.error.code, b.error.message),
        ),
        Err(_) => {
            let start: String = text.trim().chars().take(200).collect();
            let msg = if start.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {start}")
            };
            Fail::new(exit::refused(status.as_u16(), None), msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_from_the_one_response() {
        let f = refusal(
            StatusCode::CONFLICT,
            r#"{"error":{"code":"RequestNotActive","message":"nothing to revoke"}}"#,
        );
        assert_eq!(
            (f.code, f.msg.as_str()),
            (7, "RequestNotActive: nothing to revoke")
        );
        // A newer controller's code: the status decides.
        let f = refusal(
            StatusCode::FORBIDDEN,
            r#"{"error":{"code":"ApprovalRequired","message":"m"}}"#,
        );
        assert_eq!((f.code, f.msg.as_str()), (5, "ApprovalRequired: m"));
        let f = refusal(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>");
        assert_eq!(
            (f.code, f.msg.as_str()),
            (1, "HTTP 502 Bad Gateway: <html>bad gateway</html>")
        );
        let f = refusal(StatusCode::NOT_FOUND, "");
        assert_eq!((f.code, f.msg.as_str()), (6, "HTTP 404 Not Found"));
    }

    #[test]
    fn names_are_path_segments() {
        let s = Settings {
            url: "https://jit.example.net:8443/".into(),
            ca_pem: Vec::new(),
            ca_path: "ca.pem".into(),
            token: Some("t".into()),
            session_path: None,
        };
        let c = Client {
            http: reqwest::Client::new(),
            base: Url::parse(&s.url).unwrap(),
            token: s.token,
        };
        let r = c
            .get(&["virtualMachines", "a/../b?c", "requests"])
            .query(&HistoryQuery { limit: Some(5) })
            .build()
            .unwrap();
        assert_eq!(
            r.url().as_str(),
            "https://jit.example.net:8443/api/v1/virtualMachines/a%2F..%2Fb%3Fc/requests?limit=5"
        );
    }
}
