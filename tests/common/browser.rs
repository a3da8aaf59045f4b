//! A minimal browser for tests: a cookie jar and an HTTP client that never follows
//! redirects by itself, plus helpers to sign in and out at the test OpenID provider
//! (`tests/oidc-provider/server.mjs`), whose pages it knows.

use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use std::sync::Arc;
use std::time::Duration;

/// Marker attribute of the provider's login form (see `server.mjs`).
const LOGIN_FORM: &str = "data-portcullis-login";
/// Id of the provider's RP-initiated logout confirmation form.
const LOGOUT_FORM: &str = "op.logoutForm";
/// Hops allowed when driving the provider, so a redirect loop fails instead of hanging.
const MAX_HOPS: usize = 20;

/// One response, body read in full.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: u16,
    /// The URL that was requested.
    pub url: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The `Location` header resolved against [`Page::url`].
    pub fn location(&self) -> Option<String> {
        let loc = self.header("location")?;
        Some(
            Url::parse(&self.url)
                .and_then(|base| base.join(loc))
                .map(String::from)
                .unwrap_or_else(|_| loc.to_string()),
        )
    }

    /// The first value of a header, when it is valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every `Set-Cookie` header value, in order.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// A 3xx status with a `Location`.
    pub fn is_redirect(&self) -> bool {
        (300..400).contains(&self.status) && self.headers.contains_key("location")
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.url, self.body))
    }

    /// The query parameters of the resolved `Location`, decoded.
    pub fn location_params(&self) -> Vec<(String, String)> {
        self.location()
            .and_then(|l| Url::parse(&l).ok())
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default()
    }

    /// The form whose opening tag contains `marker` (an attribute, id, ...): its action
    /// resolved against [`Page::url`], and its `<input>` names and values (hidden fields,
    /// prefilled text). Meant for the provider's own simple markup, not arbitrary HTML.
    pub fn form(&self, marker: &str) -> Option<Form> {
        let body = self.body.as_str();
        let mut from = 0;
        while let Some(start) = body[from..].find("<form").map(|i| i + from) {
            let tag_end = start + body[start..].find('>')?;
            let tag = &body[start..=tag_end];
            from = tag_end;
            if !tag.contains(marker) {
                continue;
            }
            let action = attr(tag, "action").unwrap_or_default();
            let action = Url::parse(&self.url)
                .and_then(|base| base.join(&action))
                .map(String::from)
                .unwrap_or(action);
            let end = body[tag_end..]
                .find("</form>")
                .map_or(body.len(), |i| i + tag_end);
            let mut fields = Vec::new();
            let inner = &body[tag_end..end];
            let mut at = 0;
            while let Some(i) = inner[at..].find("<input").map(|i| i + at) {
                let close = inner[i..].find('>').map_or(inner.len(), |j| i + j);
                let input = &inner[i..close];
                if let Some(name) = attr(input, "name") {
                    fields.push((name, attr(input, "value").unwrap_or_default()));
                }
                at = close;
            }
            return Some(Form { action, fields });
        }
        None
    }
}

impl Page {
    /// The submit buttons of the form whose opening tag contains `marker`, each as
    /// `(name, value, label)` (label: the button's text, trimmed, entities decoded).
    /// Like [`Page::form`], meant for simple markup (the gateway's own pages).
    pub fn buttons(&self, marker: &str) -> Vec<(String, String, String)> {
        let body = self.body.as_str();
        let mut from = 0;
        while let Some(start) = body[from..].find("<form").map(|i| i + from) {
            let Some(tag_end) = body[start..].find('>').map(|i| i + start) else {
                break;
            };
            from = tag_end;
            if !body[start..=tag_end].contains(marker) {
                continue;
            }
            let end = body[tag_end..]
                .find("</form>")
                .map_or(body.len(), |i| i + tag_end);
            let inner = &body[tag_end..end];
            let mut out = Vec::new();
            let mut at = 0;
            while let Some(i) = inner[at..].find("<button").map(|i| i + at) {
                let Some(open_end) = inner[i..].find('>').map(|j| i + j) else {
                    break;
                };
                let tag = &inner[i..open_end];
                let close = inner[open_end..]
                    .find("</button>")
                    .map_or(inner.len(), |j| open_end + j);
                let label = unescape(inner[open_end + 1..close].trim());
                out.push((
                    attr(tag, "name").unwrap_or_default(),
                    attr(tag, "value").unwrap_or_default(),
                    label,
                ));
                at = close;
            }
            return out;
        }
        Vec::new()
    }
}

impl Form {
    /// The URL a GET submission of this form requests: its action with its fields and
    /// then `extra` (a pressed button's name and value, a typed email) as the query.
    pub fn get_url(&self, extra: &[(&str, &str)]) -> String {
        let mut url = Url::parse(&self.action).expect("form action is an absolute URL");
        url.set_query(None);
        url.query_pairs_mut()
            .extend_pairs(self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .extend_pairs(extra);
        url.into()
    }
}

/// A form found by [`Page::form`].
#[derive(Debug, Clone)]
pub struct Form {
    pub action: String,
    pub fields: Vec<(String, String)>,
}

/// The value of `name="…"` in one tag, HTML entities decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=\"");
    let mut from = 0;
    loop {
        let i = tag[from..].find(&needle)? + from;
        // Whole attribute names only: `name=` must not match `data-name=`.
        let before = tag[..i].chars().last();
        if before.is_some_and(|c| c.is_whitespace()) {
            let start = i + needle.len();
            let end = start + tag[start..].find('"')?;
            return Some(unescape(&tag[start..end]));
        }
        from = i + needle.len();
    }
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn same_origin(a: &str, b: &str) -> bool {
    match (Url::parse(a), Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// A cookie-keeping HTTP client that does not follow redirects.
pub struct Browser {
    pub jar: Arc<Jar>,
    client: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        let jar = Arc::new(Jar::default());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar.clone())
            .timeout(Duration::from_secs(15))
            .build()
            .expect("reqwest client");
        Browser { jar, client }
    }

    pub async fn get(&self, url: &str) -> Page {
        self.get_with(url, &[]).await
    }

    /// GET with extra request headers.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Page {
        let mut req = self.client.get(url);
        for (name, value) in headers {
            req = req.header(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        Self::read(url, req.send().await).await
    }

    /// POST `application/x-www-form-urlencoded`.
    pub async fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> Page {
        self.post_form_with(url, fields, &[]).await
    }

    /// POST `application/x-www-form-urlencoded` with extra request headers.
    pub async fn post_form_with(
        &self,
        url: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut req = self.client.post(url).form(fields);
        for (name, value) in headers {
            req = req.header(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        Self::read(url, req.send().await).await
    }

    async fn read(url: &str, sent: reqwest::Result<reqwest::Response>) -> Page {
        let resp = sent.unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading the body from {url} failed: {e}"));
        Page {
            status,
            url: url.to_string(),
            headers,
            body,
        }
    }

    /// Follows `Location` (with GET) from `page` until a response that is not a
    /// redirect; panics after `max` hops.
    pub async fn follow(&self, mut page: Page, max: usize) -> Page {
        for _ in 0..max {
            match page.is_redirect().then(|| page.location()).flatten() {
                Some(next) => page = self.get(&next).await,
                None => return page,
            }
        }
        assert!(
            !page.is_redirect(),
            "still redirecting after {max} hops: {} -> {:?}",
            page.url,
            page.location()
        );
        page
    }

    /// The `Cookie` header this browser would send to `url`.
    pub fn cookie_header(&self, url: &str) -> Option<String> {
        let url = Url::parse(url).expect("cookie_header: absolute URL");
        self.jar
            .cookies(&url)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Drives the provider's login. `start` is a page that is, or redirects (through any
    /// origins) to, a provider page: the login form, or with a live provider session the
    /// provider's redirect straight back. Fills in `login`, `password` and `otp` (when
    /// `Some`), submits, and follows the provider's redirects and auto-submitting forms.
    ///
    /// Returns the first provider response that sends the browser away from the
    /// provider's origin, NOT followed: normally the 303 to the client's `redirect_uri`
    /// with `code`, `state` and `iss` (`browser.follow(page, n)` or
    /// `browser.get(&page.location().unwrap())` then delivers it to the relying party).
    /// When the provider stops on one of its own pages instead (the login form shown
    /// again after a wrong password, an error page), returns that page.
    pub async fn sign_in_at_provider(
        &self,
        start: Page,
        issuer: &str,
        login: &str,
        password: &str,
        otp: Option<&str>,
    ) -> Page {
        let mut page = start;
        // Reach the provider, through the relying party's redirects.
        let mut hops = 0;
        while !same_origin(&page.url, issuer) {
            let next = page.is_redirect().then(|| page.location()).flatten();
            let Some(next) = next else {
                panic!(
                    "sign_in_at_provider: {} ({}) does not lead to the provider {issuer}: {}",
                    page.url, page.status, page.body
                );
            };
            hops += 1;
            assert!(hops <= MAX_HOPS, "too many redirects before the provider");
            page = self.get(&next).await;
        }

        let mut submitted = false;
        for _ in 0..MAX_HOPS {
            if page.is_redirect() {
                let next = page.location().expect("redirect has a location");
                if !same_origin(&next, issuer) {
                    return page;
                }
                page = self.get(&next).await;
                continue;
            }
            if let Some(form) = page.form(LOGIN_FORM) {
                if submitted {
                    // Shown again: the credentials were refused.
                    return page;
                }
                submitted = true;
                let mut fields = vec![("login", login), ("password", password)];
                if let Some(otp) = otp {
                    fields.push(("otp", otp));
                }
                page = self.post_form(&form.action, &fields).await;
                continue;
            }
            // oidc-provider's self-submitting forms (e.g. ending another account's
            // session before signing in as this one).
            if page.status == 200 && page.body.contains("document.forms[0].submit()") {
                if let Some(form) = page.form("method=\"post\"") {
                    if !same_origin(&form.action, issuer) {
                        return page;
                    }
                    let fields: Vec<(&str, &str)> = form
                        .fields
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    page = self.post_form(&form.action, &fields).await;
                    continue;
                }
            }
            return page;
        }
        panic!(
            "sign_in_at_provider: no way off the provider after {MAX_HOPS} steps; last page {} ({})",
            page.url, page.status
        );
    }

    /// Confirms the provider's RP-initiated logout page (the `op.logoutForm` form, as
    /// returned by GET `<issuer>/session/end?...`): posts its hidden `xsrf` with
    /// `logout=yes`. Returns the provider's answer, normally a 303 to the
    /// `post_logout_redirect_uri` or to `/session/end/success`, not followed.
    pub async fn confirm_logout_at_provider(&self, page: &Page) -> Page {
        let form = page.form(LOGOUT_FORM).unwrap_or_else(|| {
            panic!(
                "no logout form on {} ({}): {}",
                page.url, page.status, page.body
            )
        });
        let mut fields: Vec<(&str, &str)> = form
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        fields.push(("logout", "yes"));
        self.post_form(&form.action, &fields).await
    }
}
