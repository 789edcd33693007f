//! Accounts: registration and login with argon2-hashed passwords, the tokens this server
//! issues (HS256, with a `jti`), and logout, which revokes a token everywhere.

use std::{net::IpAddr, sync::Arc};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use taskpulse_shared::dto::{Credentials, TokenResponse};

use tokio::sync::Semaphore;

use crate::{
    Settings,
    broker::{Broker, Claims},
    storage::{Storage, StorageError, UserRecord},
    tasks::now_ms,
    throttle::Throttle,
};

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// `username` or `password`.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Registration is switched off.
    #[error("registration is disabled on this server (accounts.registration = false)")]
    RegistrationClosed,
    /// Tokens are issued by another system.
    #[error("this server only validates tokens issued elsewhere (jwt.algorithm is not HS256)")]
    ExternalTokens,
    /// The name is taken.
    #[error("username {0:?} is already taken")]
    Taken(String),
    /// Wrong username or password (deliberately not saying which).
    #[error("wrong username or password")]
    BadCredentials,
    /// Too many attempts from this address or for this name.
    #[error(
        "too many sign-in attempts {which}: at most {per_minute} a minute (accounts.attempts_per_minute)"
    )]
    Limited {
        /// "from this address" or "for this user name".
        which: &'static str,
        /// The setting's value.
        per_minute: u32,
        /// When the next attempt is allowed.
        retry_after: std::time::Duration,
    },
    /// The name belongs to a configured principal.
    #[error("username {0:?} is reserved for a configured identity")]
    Reserved(String),
    /// The token cannot be revoked.
    #[error("this token has no jti claim, so it cannot be revoked; it expires on its own")]
    NotRevocable,
    /// Storage or hashing failed.
    #[error("{0}")]
    Internal(String),
}

impl From<StorageError> for AccountError {
    fn from(error: StorageError) -> AccountError {
        match error {
            StorageError::UserExists(name) => AccountError::Taken(name),
            other => AccountError::Internal(other.to_string()),
        }
    }
}

/// Registration, login and logout.
#[derive(Debug, Clone)]
pub struct Accounts {
    storage: Arc<dyn Storage>,
    broker: Broker,
    settings: Settings,
    /// Password hashes computed at once: argon2id takes 19 MiB each, so unbounded hashing
    /// is unbounded memory. One per core.
    hashing: Arc<Semaphore>,
    by_address: Arc<Throttle>,
    by_name: Arc<Throttle>,
}

/// A hash to verify against when the user does not exist, so both cases take as long.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
    y5XjrJ8Lv0UuRx0mV5rW1GdJpgv3P6hGfQ3kqgVPr3M";

impl Accounts {
    /// Loads the revoked token ids into the broker.
    ///
    /// # Errors
    /// Storage failed.
    pub async fn start(
        storage: Arc<dyn Storage>,
        broker: Broker,
        settings: Settings,
    ) -> Result<Accounts, StorageError> {
        for jti in storage.revoked_tokens(now_ms() / 1000).await? {
            broker.authenticator().revoke(&jti);
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let per_minute = settings.accounts.attempts_per_minute;
        Ok(Accounts {
            storage,
            broker,
            settings,
            hashing: Arc::new(Semaphore::new(cores)),
            by_address: Arc::new(Throttle::per_minute(per_minute)),
            by_name: Arc::new(Throttle::per_minute(per_minute)),
        })
    }

    /// Counts a login or registration attempt from `client` for `username`.
    fn attempt(&self, client: Option<IpAddr>, username: &str) -> Result<(), AccountError> {
        let per_minute = self.settings.accounts.attempts_per_minute;
        if let Some(client) = client
            && let Err(retry_after) = self.by_address.check(&client.to_string())
        {
            return Err(AccountError::Limited {
                which: "from this address",
                per_minute,
                retry_after,
            });
        }
        self.by_name.check(&username.to_ascii_lowercase()).map_err(|retry_after| {
            AccountError::Limited { which: "for this user name", per_minute, retry_after }
        })
    }

    /// Runs argon2 on a blocking thread, at most one per core at a time.
    async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        let _permit =
            self.hashing.acquire().await.map_err(|e| AccountError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(work).await.map_err(|e| AccountError::Internal(e.to_string()))
    }

    /// Whether `name` belongs to a configured identity (a `[auth] users` login or a
    /// `[authorization] send_by_user` principal), which no one may register.
    fn reserved(&self, name: &str) -> bool {
        let same = |other: &str| other.eq_ignore_ascii_case(name);
        self.settings.auth.users.iter().any(|u| same(&u.login))
            || self.settings.authorization.send_by_user.keys().any(|k| same(k))
    }

    fn check(credentials: &Credentials) -> Result<(), AccountError> {
        let name = &credentials.username;
        if !(3..=32).contains(&name.chars().count()) {
            return Err(AccountError::Invalid {
                field: "username",
                reason: "must be 3 to 32 characters",
            });
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(AccountError::Invalid {
                field: "username",
                reason: "may only contain letters, digits, '.', '_' and '-'",
            });
        }
        if !(8..=256).contains(&credentials.password.chars().count()) {
            return Err(AccountError::Invalid {
                field: "password",
                reason: "must be 8 to 256 characters",
            });
        }
        Ok(())
    }

    /// Creates an account and signs it in; `client` is the caller's address, for the rate
    /// limit.
    ///
    /// # Errors
    /// Invalid fields, a taken or reserved name, registration closed, external tokens, or
    /// too many attempts.
    pub async fn register(
        &self,
        credentials: Credentials,
        client: Option<IpAddr>,
    ) -> Result<TokenResponse, AccountError> {
        if !self.settings.accounts.registration {
            return Err(AccountError::RegistrationClosed);
        }
        if self.settings.jwt.algorithm != "HS256" {
            return Err(AccountError::ExternalTokens);
        }
        Self::check(&credentials)?;
        self.attempt(client, &credentials.username)?;
        if self.reserved(&credentials.username) {
            return Err(AccountError::Reserved(credentials.username));
        }
        let password = credentials.password;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| AccountError::Internal(e.to_string()))?;
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| AccountError::Internal(e.to_string()))?;
        let hash = self
            .hash_work(move || {
                Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
            })
            .await?
            .map_err(|e| AccountError::Internal(e.to_string()))?;
        let credits = if self.settings.credits.enabled { self.settings.credits.initial } else { 0 };
        let user = UserRecord { username: credentials.username, password_hash: hash, credits };
        self.storage.create_user(&user, now_ms()).await?;
        self.issue(&user.username)
    }

    /// Checks a password and signs in; `client` is the caller's address, for the rate limit.
    ///
    /// # Errors
    /// [`AccountError::BadCredentials`] for an unknown user or a wrong password, or too many
    /// attempts.
    pub async fn login(
        &self,
        credentials: Credentials,
        client: Option<IpAddr>,
    ) -> Result<TokenResponse, AccountError> {
        if self.settings.jwt.algorithm != "HS256" {
            return Err(AccountError::ExternalTokens);
        }
        self.attempt(client, &credentials.username)?;
        let user = self.storage.user(&credentials.username).await?;
        let stored =
            user.as_ref().map_or_else(|| DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let password = credentials.password;
        let valid = self
            .hash_work(move || {
                PasswordHash::new(&stored).is_ok_and(|hash| {
                    Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()
                })
            })
            .await?;
        match user {
            Some(user) if valid => self.issue(&user.username),
            _ => Err(AccountError::BadCredentials),
        }
    }

    /// Revokes a token: it is refused from now on and its STOMP connections close.
    ///
    /// # Errors
    /// The token has no `jti`, or storage failed.
    pub async fn logout(&self, claims: &Claims) -> Result<usize, AccountError> {
        let jti = claims.jti.as_deref().ok_or(AccountError::NotRevocable)?;
        self.storage.revoke_token(jti, claims.exp as i64).await?;
        Ok(self.broker.revoke_token(jti))
    }

    fn issue(&self, username: &str) -> Result<TokenResponse, AccountError> {
        let now = (now_ms() / 1000) as u64;
        let ttl = self.settings.accounts.token_ttl_s;
        let jti =
            crate::secret::random_hex(16).map_err(|e| AccountError::Internal(e.to_string()))?;
        let claims = Claims {
            sub: username.to_owned(),
            exp: now + ttl,
            nbf: None,
            iat: Some(now),
            jti: Some(jti),
        };
        let token =
            self.broker.authenticator().issue(&claims).ok_or(AccountError::ExternalTokens)?;
        Ok(TokenResponse { token, expires_in: ttl })
    }
}
