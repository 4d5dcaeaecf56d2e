//! `jit login` (browser with a loopback redirect, and `--device`), `jit whoami` and
//! `jit logout`, as a person runs them: the real binary, a real controller, and a real
//! OpenID provider (oidc-provider on Node.js) whose pages a scripted person fills in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::Env;
use jitgate_oidc_testprovider::{
    CLI_CLIENT_ID, Choice, Person, Setup, TestCa, TestProvider, WEB_CLIENT_ID,
};
use tokio::io::{AsyncBufReadExt, BufReader};

struct Rig {
    ca: Arc<TestCa>,
    _op: TestProvider,
    env: Env,
    home: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let ca = Arc::new(TestCa::new().unwrap());
        let op = TestProvider::start(ca.clone(), &Setup::default())
            .await
            .unwrap();
        let text = format!(
            "[oidc]\nissuer = \"{}\"\nclient_id = \"{WEB_CLIENT_ID}\"\ncli_client_id = \
             \"{CLI_CLIENT_ID}\"\nscopes = [\"openid\", \"profile\", \"email\", \"groups\", \
             \"offline_access\"]\ngroups_claim = \"groups\"\nname_claim = \"preferred_username\"\n\
             session_lifetime = \"PT1H\"\nca_file = \"{}\"\nauth_params = {{ prompt = \"consent\" }}\n\
             [[oidc.roles]]\ngroup = \"jit-admins\"\nrole = \"admin\"\nscope = \"*\"\n",
            op.issuer(),
            ca.ca_file().display()
        );
        let oidc = jitgate_oidc::OidcConfig::from_toml(&text).unwrap();
        let env = Env::with_config(|c, _| c.oidc = Some(oidc)).await;
        Rig {
            ca,
            _op: op,
            env,
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn person(&self, login: &str) -> Person {
        Person::new(&self.ca, &Setup::default().user(login).unwrap()).unwrap()
    }

    fn session_file(&self) -> PathBuf {
        self.home.path().join("jit/session.json")
    }

    /// `jit ARGS` as a person runs it: no JIT_TOKEN, the configuration under a home of its own.
    fn jit(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_jit"));
        c.args(args)
            .env("JIT_URL", &self.env.url)
            .env("JIT_CA", self.env.dir.ca_cert())
            .env_remove("JIT_TOKEN")
            .env("JIT_CONFIG", self.home.path().join("jit/config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let o = self.jit(args).output().await.unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into(),
            String::from_utf8_lossy(&o.stderr).into(),
        )
    }

    /// Runs `jit login ARGS`, hands each stderr line to `step` until it returns true, then
    /// waits for the command. Returns its exit code and output.
    async fn login(
        &self,
        args: &[&str],
        mut step: impl AsyncFnMut(&str) -> bool,
    ) -> (i32, String, String) {
        let mut child = self.jit(args).spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), err.next_line())
                .await
                .expect("jit login printed nothing for 60 s")
                .unwrap()
                .unwrap_or_else(|| panic!("jit login ended early: {seen}"));
            seen.push_str(&line);
            seen.push('\n');
            if step(&line).await {
                break;
            }
        }
        let o = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("jit login did not finish")
            .unwrap();
        let mut rest = String::new();
        while let Ok(Some(l)) = err.next_line().await {
            rest.push_str(&l);
        }
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into(),
            seen + &rest,
        )
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn device_login_whoami_and_logout() {
    let rig = Rig::start().await;
    let (code, _, err) = rig.run(&["vms"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not signed in: run `jit login`"), "{err}");

    let alice = rig.person("alice");
    let (code, out, err) = rig
        .login(&["login", "--device"], async |line: &str| {
            let Some(rest) = line.strip_prefix("To sign in, open ") else {
                return false;
            };
            let (uri, code) = rest.split_once(" and enter the code ").unwrap();
            alice.device(uri, code.trim(), Choice::Allow).await.unwrap();
            true
        })
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("Signed in.\nalice (admin on *)"), "{out}");
    let file = rig.session_file();
    assert_eq!(mode(&file), 0o600);
    let saved = std::fs::read_to_string(&file).unwrap();
    let credential: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let credential = credential["credential"].as_str().unwrap();
    assert!(credential.starts_with("jitsess_"));
    assert!(
        !out.contains(credential) && !err.contains(credential),
        "the credential is never printed"
    );

    let (code, out, err) = rig.run(&["whoami"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("groups:    jit-admins, prod-ops"), "{out}");
    assert!(out.contains("admin on * via jit-admins"), "{out}");
    assert!(out.contains("session ends: "), "{out}");
    assert!(out.contains("My IP:     127.0.0.1"), "{out}");
    let (code, out, err) = rig.run(&["vms"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web1"), "{out}");

    let (code, out, err) = rig.run(&["logout"]).await;
    assert_eq!((code, out.as_str()), (0, "Signed out.\n"), "{err}");
    assert!(!file.exists());
    let (code, _, err) = rig.run(&["whoami"]).await;
    assert_eq!(code, 4, "{err}");
    // The session ended at the controller too (not only forgotten here).
    let (s, v) = rig
        .env
        .server
        .app
        .sessions
        .list(&jitgate_controller::authz::Caller::local(), true)
        .await
        .map(|l| (l.len(), l[0].end_reason.clone()))
        .unwrap();
    assert_eq!((s, v.unwrap().as_str()), (1, "signed_out"));
}

#[tokio::test]
async fn browser_login_with_a_loopback_redirect_and_a_person_without_a_role() {
    let rig = Rig::start().await;
    let carol = rig.person("carol");
    let mut url = None;
    let (code, out, err) = rig
        .login(&["login", "--no-browser"], async |line: &str| {
            let l = line.trim();
            if !l.starts_with("https://") {
                return false;
            }
            url = Some(l.to_string());
            let back = carol
                .authorize(l, "http://127.0.0.1:", Choice::Allow)
                .await
                .unwrap();
            assert!(back.starts_with("http://127.0.0.1:"), "{back}");
            let (status, page) = carol.visit(&back).await.unwrap();
            assert_eq!(status, 200);
            assert!(page.starts_with("Signed in to jitgate"), "{page}");
            true
        })
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let url = url.unwrap();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains(&format!("client_id={CLI_CLIENT_ID}")), "{url}");
    assert!(out.contains("carol (no role)"), "{out}");
    assert!(
        out.contains(
            "no role:   you are in no group, so you have no role; ask for one of: jit-admins"
        ),
        "{out}"
    );
    let (code, out, _) = rig.run(&["vms"]).await;
    assert_eq!(code, 0);
    assert!(!out.contains("web1"), "sees nothing: {out}");
}
