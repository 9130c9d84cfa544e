//! Who is looking: the session cookie (a login token, HttpOnly,
//! SameSite=Strict, Secure under TLS) and the CSRF token every changing
//! form carries, derived from the session so nothing is stored for it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use halite_api::routes::{cookie, Shared, PORTAL_COOKIE};

/// The logged-in user of a page request.
pub struct Viewer {
    /// User name (`root` never logs in here: root is the local CLI).
    pub user: String,
    /// The session's login token.
    pub token: String,
    /// What this session's forms must carry as `csrf`.
    pub csrf: String,
}

/// The CSRF token of a session: a keyed hash of its login token, so a
/// page from another site (which cannot read the HttpOnly cookie) cannot
/// produce it.
pub fn csrf_of(token: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"halite-portal-csrf");
    hex::encode(&ring::hmac::sign(&key, token.as_bytes()).as_ref()[..16])
}

impl Viewer {
    /// Refuses a changing form whose CSRF token is not this session's.
    pub fn check_csrf(&self, given: &str) -> Result<(), CsrfRefused> {
        let given = given.as_bytes();
        let expected = self.csrf.as_bytes();
        // Constant time: equal lengths compared whole.
        let same = given.len() == expected.len()
            && given
                .iter()
                .zip(expected)
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(CsrfRefused)
        }
    }
}

/// A form without this session's CSRF token: 403.
#[derive(Debug)]
pub struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        crate::pages::problem(
            axum::http::StatusCode::FORBIDDEN,
            "This form is stale or did not come from this portal. Go back, reload, and try again.",
        )
    }
}

impl FromRequestParts<Shared> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        backend: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let token = cookie(&parts.headers, PORTAL_COOKIE);
        let user = token.as_deref().and_then(|t| backend.authenticate(t));
        match (token, user) {
            (Some(token), Some(user)) => Ok(Viewer {
                csrf: csrf_of(&token),
                user,
                token,
            }),
            _ => {
                let back = parts.uri.path_and_query().map_or("/ui/", |p| p.as_str());
                let to = format!(
                    "/ui/login?next={}",
                    form_urlencoded::byte_serialize(back.as_bytes()).collect::<String>()
                );
                Err(Redirect::to(&to).into_response())
            }
        }
    }
}

/// The `Set-Cookie` value of a new session (`secure` under TLS).
pub fn session_cookie(token: &str, secure: bool) -> String {
    format!(
        "{PORTAL_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn cleared_cookie(secure: bool) -> String {
    format!(
        "{PORTAL_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_differ_per_session_and_are_checked_whole() {
        let a = csrf_of("token-a");
        assert_ne!(a, csrf_of("token-b"));
        assert_eq!(a.len(), 32);
        let viewer = Viewer {
            user: "dev".into(),
            token: "token-a".into(),
            csrf: a.clone(),
        };
        assert!(viewer.check_csrf(&a).is_ok());
        assert!(viewer.check_csrf(&a[..31]).is_err());
        assert!(viewer.check_csrf("").is_err());
        assert!(viewer.check_csrf(&csrf_of("token-b")).is_err());
    }

    #[test]
    fn session_cookies_are_http_only_strict_and_secure_under_tls() {
        let plain = session_cookie("t", false);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(session_cookie("t", true).ends_with("; Secure"));
        assert!(cleared_cookie(false).contains("Max-Age=0"));
    }
}
