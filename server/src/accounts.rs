//! Accounts: registration and login with argon2-hashed passwords, the tokens this server
//! issues (HS256, with a `jti`), and logout, which revokes a token everywhere.

use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use taskpulse_shared::dto::{Credentials, TokenResponse};

use crate::{
    Settings,
    broker::{Broker, Claims},
    storage::{Storage, StorageError, UserRecord},
    tasks::now_ms,
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
        Ok(Accounts { storage, broker, settings })
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

    /// Creates an account and signs it in.
    ///
    /// # Errors
    /// Invalid fields, a taken name, registration closed, or external tokens.
    pub async fn register(&self, credentials: Credentials) -> Result<TokenResponse, AccountError> {
        if !self.settings.accounts.registration {
            return Err(AccountError::RegistrationClosed);
        }
        if self.settings.jwt.algorithm != "HS256" {
            return Err(AccountError::ExternalTokens);
        }
        Self::check(&credentials)?;
        let password = credentials.password;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| AccountError::Internal(e.to_string()))?;
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| AccountError::Internal(e.to_string()))?;
        let hash = tokio::task::spawn_blocking(move || {
            Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
        })
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?
        .map_err(|e| AccountError::Internal(e.to_string()))?;
        let credits = if self.settings.credits.enabled { self.settings.credits.initial } else { 0 };
        let user = UserRecord { username: credentials.username, password_hash: hash, credits };
        self.storage.create_user(&user, now_ms()).await?;
        self.issue(&user.username)
    }

    /// Checks a password and signs in.
    ///
    /// # Errors
    /// [`AccountError::BadCredentials`] for an unknown user or a wrong password.
    pub async fn login(&self, credentials: Credentials) -> Result<TokenResponse, AccountError> {
        if self.settings.jwt.algorithm != "HS256" {
            return Err(AccountError::ExternalTokens);
        }
        let user = self.storage.user(&credentials.username).await?;
        let stored =
            user.as_ref().map_or_else(|| DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let password = credentials.password;
        let valid = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored).is_ok_and(|hash| {
                Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()
            })
        })
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?;
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
