//! A controller with `[notify]` from controller.toml as an operator writes it: the given
//! CA trusted, 127.0.0.1 allowed, secrets in a temporary directory (written 0600 by the
//! store), and whatever else `tail` adds (sinks).

use jitgate_controller::state::Config;
use jitgate_notify::{SecretName, SecretStore};

use super::Harness;

pub struct Rig {
    pub h: Harness,
    /// The secrets directory (`secrets/`) and the CA file.
    pub tmp: tempfile::TempDir,
}

impl Rig {
    /// `secrets`: (name, value) written before the controller starts; `tail`: more of
    /// the `[notify]` table (after its keys) and `[[notify.sinks]]` tables.
    pub async fn start(ca_pem: &str, secrets: &[(&str, &[u8])], tail: &str) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("ca.pem"), ca_pem).unwrap();
        let store = SecretStore::open(tmp.path().join("secrets")).unwrap();
        for (name, value) in secrets {
            store
                .put(&name.parse::<SecretName>().unwrap(), value)
                .unwrap();
        }
        let text = format!(
            "[notify]\nsecrets_dir = \"{}\"\nallow_networks = [\"127.0.0.1/32\"]\n\
             ca_files = [\"{}\"]\nsystem_roots = false\ntimeout_seconds = 3\n{tail}",
            tmp.path().join("secrets").display(),
            tmp.path().join("ca.pem").display(),
        );
        let parsed: Config = toml::from_str(&text).unwrap();
        let h = Harness::with_config(|c| c.notify = parsed.notify).await;
        h.fixture().await;
        Rig { h, tmp }
    }
}
