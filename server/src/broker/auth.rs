//! Who is connecting: JWTs from CONNECT headers or the WebSocket URL, configured
//! login/passcode users, and share links' tokens (a watcher of one task, no account).
//! Failures carry a reason for the log, never for the client.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use taskpulse_shared::stomp::Connect;

use crate::{
    config::{AuthSettings, JwtAlgorithm, JwtSettings},
    secret::constant_time_eq,
};

/// The claims TaskPulse reads (and writes, for tokens it issues).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The principal.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Token id, for revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// An authenticated principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name (`sub`, or the configured login).
    pub name: String,
    /// The token's `jti`, when it had one.
    pub token_id: Option<String>,
    /// A configured identity: a `[auth] users` login, or a token from an external issuer
    /// (RS256/ES256), whose names no one can register here. Only these get the rights of
    /// `[authorization] send_by_user`; an account anyone registered never does.
    pub configured: bool,
    /// When the credentials stop being valid (a token's `exp` plus the allowed leeway),
    /// seconds since the Unix epoch; `None` for configured logins, which do not expire.
    pub expires_at: Option<u64>,
    /// Set for the holder of a share link: it may watch this one task and nothing else.
    pub watches: Option<Arc<SharedTask>>,
}

/// What a share link lets its holder watch: one task of one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTask {
    /// The link's id (the SHA-256 of its token, hex).
    pub id: String,
    /// The task's owner.
    pub owner: String,
    /// The task.
    pub task_no: String,
}

impl SharedTask {
    /// The principal name of the link's watchers: `share:` and the start of its id. No
    /// account can have it (registered names have no `:`, and tokens naming it are refused),
    /// so the per-user connection limit counts a link's watchers apart and revoking the
    /// link closes exactly their sessions.
    pub fn principal(&self) -> String {
        format!("{SHARE_PRINCIPAL_PREFIX}{}", &self.id[..self.id.len().min(16)])
    }
}

/// How the principal names of share links' watchers start.
const SHARE_PRINCIPAL_PREFIX: &str = "share:";

/// The CONNECT header that carries a share link's token.
pub const SHARE_HEADER: &str = "share";

/// A share link's id: the SHA-256 of its token, hex. Storage and memory keep only this.
pub fn share_id(token: &str) -> String {
    crate::secret::hex(&Sha256::digest(token.as_bytes()))
}

/// Why authentication failed. Logged; the client only sees "authentication failed".
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No Authorization header, passcode or access_token.
    #[error("no credentials: expected Authorization: Bearer, login/passcode or access_token")]
    NoCredentials,
    /// The token's `jti` was revoked (its holder signed out).
    #[error("token {0:?} was revoked")]
    Revoked(String),
    /// The token did not validate.
    #[error("invalid token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// The token's `sub` is empty, contains control characters or names a share link.
    #[error("invalid principal {0:?} in token")]
    BadPrincipal(String),
    /// A share link's token that is unknown or revoked.
    #[error("unknown or revoked share link")]
    UnknownShare,
    /// A configured login with the wrong passcode.
    #[error("wrong passcode for configured user {0:?}")]
    WrongPasscode(String),
    /// `login`/`passcode` for a login that is not configured, and no token anywhere.
    #[error("login {0:?} is not a configured user ([auth] users) and no token was given")]
    UnknownLogin(String),
}

impl AuthError {
    /// The failure's name in the metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            AuthError::NoCredentials => "no-credentials",
            AuthError::Revoked(_) => "revoked-token",
            AuthError::Token(e)
                if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature =>
            {
                "expired-token"
            }
            AuthError::Token(_) => "invalid-token",
            AuthError::BadPrincipal(_) => "invalid-principal",
            AuthError::WrongPasscode(_) => "wrong-passcode",
            AuthError::UnknownLogin(_) => "unknown-login",
            AuthError::UnknownShare => "unknown-share",
        }
    }
}

/// Why the authentication settings are unusable.
#[derive(Debug, thiserror::Error)]
#[error("jwt settings: {0}")]
pub struct KeyError(String);

/// The shortest HS256 secret accepted: 256 bits, the size of the HMAC's output. A short
/// secret can be found by trying candidates against any token the server issued.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// The share links in memory: by id (a CONNECT's lookup) and by task.
#[derive(Debug, Default)]
struct Shares {
    by_id: HashMap<String, Arc<SharedTask>>,
    by_task: HashMap<String, String>,
}

/// Validates credentials against the configured keys and users.
pub struct Authenticator {
    algorithm: Algorithm,
    decoding: DecodingKey,
    /// Present for HS256, so the server can issue tokens with the same secret.
    encoding: Option<EncodingKey>,
    validation: Validation,
    users: HashMap<String, String>,
    /// Revoked `jti`s; the storage keeps them across restarts.
    revoked: RwLock<HashSet<String>>,
    /// Share links; the storage keeps them, the task shares service keeps this.
    shares: RwLock<Shares>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the validator. An HS256 secret must be set (the server generates one into the
    /// database when the settings leave it empty, see `AppState::new`).
    ///
    /// # Errors
    /// The secret is missing or short, or the public key file is missing or not a PEM key of
    /// the configured algorithm.
    pub fn new(jwt: &JwtSettings, auth: &AuthSettings) -> Result<Self, KeyError> {
        let (algorithm, decoding, encoding) = match jwt.algorithm {
            JwtAlgorithm::HS256 => {
                if jwt.secret.len() < MIN_SECRET_BYTES {
                    return Err(KeyError(format!(
                        "jwt.secret has {} bytes; an HS256 secret needs at least \
                         {MIN_SECRET_BYTES} (leave it empty to have one generated)",
                        jwt.secret.len()
                    )));
                }
                let secret = jwt.secret.as_bytes();
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret),
                    Some(EncodingKey::from_secret(secret)),
                )
            }
            asymmetric => {
                let path = &jwt.public_key_file;
                let pem = std::fs::read(path)
                    .map_err(|e| KeyError(format!("cannot read {}: {e}", path.display())))?;
                let (algorithm, key) = if asymmetric == JwtAlgorithm::RS256 {
                    (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem))
                } else {
                    (Algorithm::ES256, DecodingKey::from_ec_pem(&pem))
                };
                let key = key.map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
                (algorithm, key, None)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = jwt.leeway_s;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if jwt.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&jwt.issuer]);
        }
        if jwt.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&jwt.audience]);
        }
        let users = auth.users.iter().map(|u| (u.login.clone(), u.passcode.clone())).collect();
        Ok(Authenticator {
            algorithm,
            decoding,
            encoding,
            validation,
            users,
            revoked: RwLock::default(),
            shares: RwLock::default(),
        })
    }

    /// Authenticates a CONNECT: a share link's token in [`SHARE_HEADER`], then
    /// `Authorization: Bearer`, then configured `login`/`passcode`, then a token in
    /// `passcode`, then the URL's `access_token`.
    ///
    /// # Errors
    /// An [`AuthError`] saying why, for the log.
    pub fn authenticate(
        &self,
        connect: &Connect,
        access_token: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if let Some(token) = connect.header(SHARE_HEADER) {
            return self.watcher(token.trim());
        }
        let bearer =
            connect.header("Authorization").or_else(|| connect.header("authorization")).and_then(
                |value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")),
            );
        if let Some(token) = bearer {
            return self.validate(token.trim());
        }
        if let (Some(login), Some(passcode)) = (connect.header("login"), connect.header("passcode"))
            && let Some(expected) = self.users.get(login)
        {
            return if constant_time_eq(expected.as_bytes(), passcode.as_bytes()) {
                Ok(Principal {
                    name: login.to_owned(),
                    token_id: None,
                    configured: true,
                    expires_at: None,
                    watches: None,
                })
            } else {
                Err(AuthError::WrongPasscode(login.to_owned()))
            };
        }
        if let Some(token) = connect.header("passcode").filter(|p| p.matches('.').count() == 2) {
            return self.validate(token);
        }
        match (access_token, connect.header("login")) {
            (Some(token), _) => self.validate(token),
            (None, Some(login)) => Err(AuthError::UnknownLogin(login.to_owned())),
            (None, None) => Err(AuthError::NoCredentials),
        }
    }

    /// Validates one token.
    ///
    /// # Errors
    /// An [`AuthError`] saying why.
    pub fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.validate_claims(token)?;
        let configured = self.algorithm != Algorithm::HS256;
        let expires_at = Some(claims.exp.saturating_add(self.validation.leeway));
        Ok(Principal {
            name: claims.sub,
            token_id: claims.jti,
            configured,
            expires_at,
            watches: None,
        })
    }

    /// The watcher a share link's `token` admits.
    ///
    /// # Errors
    /// [`AuthError::UnknownShare`]: no link has this token (never had, or was revoked).
    pub fn watcher(&self, token: &str) -> Result<Principal, AuthError> {
        let shared = self.shared(token).ok_or(AuthError::UnknownShare)?;
        Ok(Principal {
            name: shared.principal(),
            token_id: None,
            configured: false,
            expires_at: None,
            watches: Some(shared),
        })
    }

    /// The task a share link's `token` shows, if the link exists.
    pub fn shared(&self, token: &str) -> Option<Arc<SharedTask>> {
        self.shares.read().by_id.get(&share_id(token)).cloned()
    }

    /// Whether `task_no` has a share link.
    pub fn is_shared(&self, task_no: &str) -> bool {
        self.shares.read().by_task.contains_key(task_no)
    }

    /// Admits the holders of `share`'s token from now on (instead of its task's earlier link).
    pub fn add_share(&self, share: SharedTask) {
        let mut shares = self.shares.write();
        if let Some(old) = shares.by_task.insert(share.task_no.clone(), share.id.clone()) {
            shares.by_id.remove(&old);
        }
        shares.by_id.insert(share.id.clone(), Arc::new(share));
    }

    /// Refuses the holders of the share link `id` from now on.
    pub fn remove_share(&self, id: &str) {
        let mut shares = self.shares.write();
        if let Some(share) = shares.by_id.remove(id)
            && shares.by_task.get(&share.task_no).is_some_and(|current| current == id)
        {
            shares.by_task.remove(&share.task_no);
        }
    }

    /// Validates one token and returns its claims (logout needs `jti` and `exp`).
    ///
    /// # Errors
    /// An [`AuthError`] saying why.
    pub fn validate_claims(&self, token: &str) -> Result<Claims, AuthError> {
        let claims =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?.claims;
        if claims.sub.is_empty()
            || claims.sub.chars().any(char::is_control)
            || claims.sub.starts_with(SHARE_PRINCIPAL_PREFIX)
        {
            return Err(AuthError::BadPrincipal(claims.sub));
        }
        if let Some(jti) = &claims.jti
            && self.revoked.read().contains(jti)
        {
            return Err(AuthError::Revoked(jti.clone()));
        }
        Ok(claims)
    }

    /// Refuses tokens with this `jti` from now on (see [`super::Broker::revoke_token`], which
    /// also closes their sessions).
    pub fn revoke(&self, token_id: &str) {
        self.revoked.write().insert(token_id.to_owned());
    }

    /// Whether tokens with this `jti` are refused.
    pub fn is_revoked(&self, token_id: &str) -> bool {
        self.revoked.read().contains(token_id)
    }

    /// Signs `claims` with the HS256 secret; `None` when tokens are validated with a public
    /// key (they are then issued elsewhere).
    pub fn issue(&self, claims: &Claims) -> Option<String> {
        let key = self.encoding.as_ref()?;
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, key).ok()
    }
}

#[cfg(test)]
mod tests {
    use taskpulse_shared::stomp::{Headers, HeartBeat, Version};

    use super::*;
    use crate::config::ConfigUser;

    fn connect(headers: &[(&str, &str)]) -> Connect {
        let mut all = Headers::new();
        for (name, value) in headers {
            all.push(name, value);
        }
        Connect {
            accept_version: vec![Version::V1_2],
            host: None,
            heart_beat: HeartBeat::default(),
            headers: all,
        }
    }

    #[test]
    fn each_refusal_says_why_for_the_log() {
        let jwt = JwtSettings {
            secret: "auth-tests-secret-of-thirty-two-bytes".into(),
            ..Default::default()
        };
        let auth = AuthSettings {
            users: vec![ConfigUser { login: "svc".into(), passcode: "right".into() }],
            ..Default::default()
        };
        let auth = Authenticator::new(&jwt, &auth).unwrap();
        let reason = |headers: &[(&str, &str)]| auth.authenticate(&connect(headers), None);
        assert!(matches!(reason(&[]), Err(AuthError::NoCredentials)));
        assert!(matches!(
            reason(&[("login", "svc"), ("passcode", "wrong")]),
            Err(AuthError::WrongPasscode(login)) if login == "svc"
        ));
        // A login nobody configured used to be logged as "no credentials".
        assert!(matches!(
            reason(&[("login", "nobody"), ("passcode", "x")]),
            Err(AuthError::UnknownLogin(login)) if login == "nobody"
        ));
        let ok = reason(&[("login", "svc"), ("passcode", "right")]).unwrap();
        assert!(ok.configured && ok.expires_at.is_none());
        // Tokens this server issues belong to registrable accounts: not configured.
        let claims =
            Claims { sub: "svc".into(), exp: u64::MAX / 4, nbf: None, iat: None, jti: None };
        let token = auth.issue(&claims).unwrap();
        let principal = reason(&[("Authorization", &format!("Bearer {token}"))]).unwrap();
        assert!(!principal.configured && principal.expires_at.is_some());

        let short = JwtSettings { secret: "short".into(), ..Default::default() };
        let refused = Authenticator::new(&short, &AuthSettings::default());
        assert!(refused.unwrap_err().to_string().contains("jwt.secret has 5 bytes"));
    }
}
