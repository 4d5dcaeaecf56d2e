//! A person with a browser, scripted: follows redirects, fills the provider's login, consent
//! and device forms, and stops where the provider sends the browser back to the relying
//! party. A cookie jar keeps the provider's session, as a browser would.

use crate::process::client;
use crate::{HarnessError, TestCa, User};

/// Pages a sign-in may take before the harness gives up (a loop is a bug).
const MAX_STEPS: usize = 20;

pub struct Person {
    http: reqwest::Client,
    pub user: User,
}

impl std::fmt::Debug for Person {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Person({})", self.user.login)
    }
}

/// What the person does on the login page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Allow,
    Cancel,
}

/// One page as the person sees it.
enum Step {
    Redirect(String),
    Page(String),
}

impl Person {
    /// A fresh browser (empty cookie jar) that trusts `ca`.
    pub fn new(ca: &TestCa, user: &User) -> Result<Person, HarnessError> {
        Ok(Person {
            http: client(ca)?,
            user: user.clone(),
        })
    }

    async fn send_get(&self, url: &str) -> Result<reqwest::Response, HarnessError> {
        self.http
            .get(url)
            .send()
            .await
            .map_err(|e| HarnessError::chain(format!("GET {url}"), &e))
    }

    async fn get(&self, url: &str) -> Result<(Step, String), HarnessError> {
        step(url, self.send_get(url).await?).await
    }

    async fn post(
        &self,
        url: &str,
        form: &[(String, String)],
    ) -> Result<(Step, String), HarnessError> {
        let resp = self
            .http
            .post(url)
            .form(form)
            .send()
            .await
            .map_err(|e| HarnessError::chain(format!("POST {url}"), &e))?;
        step(url, resp).await
    }

    /// Opens `authorize_url` and signs in and consents (or cancels at the login page);
    /// returns the redirect back to the relying party (the first redirect whose URL starts
    /// with `back_to`), without following it.
    pub async fn authorize(
        &self,
        authorize_url: &str,
        back_to: &str,
        choice: Choice,
    ) -> Result<String, HarnessError> {
        self.run(authorize_url, Some(back_to), choice, None)
            .await
            .map(|r| r.unwrap_or_default())
    }

    /// Enters `user_code` on the device page, confirms, and signs in and consents (or
    /// cancels at the login page).
    pub async fn device(
        &self,
        verification_uri: &str,
        user_code: &str,
        choice: Choice,
    ) -> Result<(), HarnessError> {
        self.run(verification_uri, None, choice, Some(user_code))
            .await
            .map(|_| ())
    }

    /// A plain GET (the browser arriving at the CLI's loopback listener); status and body.
    pub async fn visit(&self, url: &str) -> Result<(u16, String), HarnessError> {
        let resp = self.send_get(url).await?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| HarnessError::chain(format!("GET {url}"), &e))?;
        Ok((status, body))
    }

    async fn run(
        &self,
        start: &str,
        back_to: Option<&str>,
        choice: Choice,
        user_code: Option<&str>,
    ) -> Result<Option<String>, HarnessError> {
        let (mut step, mut at) = self.get(start).await?;
        let mut cancelled = false;
        for _ in 0..MAX_STEPS {
            let html = match step {
                Step::Redirect(to) => {
                    if let Some(b) = back_to
                        && to.starts_with(b)
                    {
                        return Ok(Some(to));
                    }
                    (step, at) = self.get(&to).await?;
                    continue;
                }
                Step::Page(html) => html,
            };
            if html.contains("id=\"device-success\"") || cancelled {
                return Ok(None);
            }
            let (id, action) = if let Some(f) = form(&html, "login") {
                if choice == Choice::Cancel {
                    cancelled = true;
                    form(&html, "abort")
                        .ok_or_else(|| HarnessError(format!("no cancel form at {at}")))?
                } else {
                    f
                }
            } else if let Some(f) = form(&html, "consent") {
                f
            } else if let Some(f) = form(&html, "op.deviceInputForm") {
                f
            } else if let Some(f) = form(&html, "op.deviceConfirmForm") {
                f
            } else {
                return Err(HarnessError(format!("unexpected page at {at}:\n{html}")));
            };
            let mut fields = hidden_inputs(&html, &id);
            match id.as_str() {
                "login" => {
                    fields.push(("login".into(), self.user.login.clone()));
                    fields.push(("password".into(), self.user.password.clone()));
                }
                "op.deviceInputForm" => {
                    let code = user_code
                        .ok_or_else(|| HarnessError("a device page, but no user code".into()))?;
                    fields.push(("user_code".into(), code.to_string()));
                }
                _ => {}
            }
            let url = resolve(&at, &action)?;
            (step, at) = self.post(&url, &fields).await?;
        }
        Err(HarnessError(format!(
            "no end after {MAX_STEPS} pages, at {at}"
        )))
    }
}

async fn step(url: &str, resp: reqwest::Response) -> Result<(Step, String), HarnessError> {
    let status = resp.status();
    if status.is_redirection() {
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| HarnessError(format!("{url}: {status} without Location")))?;
        return Ok((Step::Redirect(resolve(url, loc)?), url.to_string()));
    }
    let body = resp.text().await.map_err(|e| HarnessError::new(url, e))?;
    if !status.is_success() {
        return Err(HarnessError(format!("{url}: {status}\n{body}")));
    }
    Ok((Step::Page(body), url.to_string()))
}

fn resolve(base: &str, rel: &str) -> Result<String, HarnessError> {
    let base = url::Url::parse(base).map_err(|e| HarnessError::new(base, e))?;
    base.join(&unescape(rel))
        .map(|u| u.to_string())
        .map_err(|e| HarnessError::new(rel, e))
}

/// The `<form id="ID" ... action="...">`: its id and action.
fn form(html: &str, id: &str) -> Option<(String, String)> {
    let tag = form_tag(html, id)?;
    Some((id.to_string(), attr(tag, "action")?))
}

fn form_tag<'a>(html: &'a str, id: &str) -> Option<&'a str> {
    let needle = format!("id=\"{id}\"");
    let mut rest = html;
    while let Some(start) = rest.find("<form") {
        let tag_end = rest[start..].find('>')? + start;
        let tag = &rest[start..tag_end];
        if tag.contains(&needle) {
            return Some(&rest[start..]);
        }
        rest = &rest[tag_end..];
    }
    None
}

/// The hidden inputs of form `id` (name, value), in order.
fn hidden_inputs(html: &str, id: &str) -> Vec<(String, String)> {
    let Some(from) = form_tag(html, id) else {
        return vec![];
    };
    let body = &from[..from.find("</form>").unwrap_or(from.len())];
    let mut out = vec![];
    let mut rest = body;
    while let Some(i) = rest.find("<input") {
        let end = rest[i..].find('>').map_or(rest.len(), |e| i + e);
        let tag = &rest[i..end];
        if tag.contains("type=\"hidden\"")
            && let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value"))
        {
            out.push((n, v));
        }
        rest = &rest[end..];
    }
    out
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let i = tag.find(&needle)? + needle.len();
    let end = tag[i..].find('"')? + i;
    Some(unescape(&tag[i..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_hidden_inputs() {
        let html = r#"<p>x</p><form id="other" action="/no"><input type="hidden" name="a" value="1"/></form>
<form id="op.deviceConfirmForm" method="post" action="/device?x=1&amp;y=2">
<input type="hidden" name="xsrf" value="abc"/>
<input type="hidden" name="user_code" value="BCDF-GHJK"/>
<input type="text" name="other" value="no"/>
</form>"#;
        assert_eq!(
            form(html, "op.deviceConfirmForm").unwrap().1,
            "/device?x=1&y=2"
        );
        assert_eq!(
            hidden_inputs(html, "op.deviceConfirmForm"),
            vec![
                ("xsrf".to_string(), "abc".to_string()),
                ("user_code".to_string(), "BCDF-GHJK".to_string())
            ]
        );
        assert!(form(html, "login").is_none());
    }
}
