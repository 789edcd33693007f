//! Accounts: registration and login with argon2-hashed passwords, the tokens this server
//! issues (HS256, with a `jti`), and logout, which revokes a token everywhere.

use std::{net::IpAddr, sync::Arc};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString},
};
use taskpulse_shared::dto::{Credentials, TokenResponse};

use tokio::sync::oneshot;

use crate::{
    JwtAlgorithm, Settings,
    broker::{Broker, Claims, Fanout},
    now_ms,
    storage::{Storage, StorageError, UserRecord},
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
    /// Too many sign-ins are waiting for password hashing.
    #[error("too many sign-ins are waiting; try again in a moment")]
    Busy,
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
    /// Where revocations go (every session of the token, on every server).
    fanout: Arc<dyn Fanout>,
    settings: Settings,
    /// Where passwords are hashed: argon2id takes 19 MiB a hash, so unbounded hashing is
    /// unbounded memory.
    hashers: Arc<Hashers>,
    by_address: Arc<Throttle>,
    by_name: Arc<Throttle>,
}

/// Password hashing off the async workers, on one thread per core, each with its own argon2
/// memory (19 MiB) allocated once and reused. Letting argon2 allocate per hash made glibc
/// raise its mmap threshold after the first free and then keep every freed block: RSS grew
/// by 19 MiB a login, 500 MiB after 48 concurrent ones.
#[derive(Debug)]
struct Hashers {
    jobs: std::sync::mpsc::SyncSender<HashJob>,
}

/// A hashing job; it gets the thread's argon2 memory.
type HashJob = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Hashing jobs that may wait for a thread; beyond them a sign-in gets "busy".
const HASH_QUEUE: usize = 1024;

impl Hashers {
    fn start(threads: usize) -> Hashers {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<HashJob>(HASH_QUEUE);
        let queue = Arc::new(parking_lot::Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned =
                std::thread::Builder::new().name(format!("argon2-{n}")).spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        // The lock is held only to take the next job.
                        let job = queue.lock().recv();
                        match job {
                            Ok(job) => job(&mut memory),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a password hashing thread: {e}");
            }
        }
        Hashers { jobs }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        let (done, result) = oneshot::channel();
        let job = Box::new(move |memory: &mut Vec<Block>| {
            let _ = done.send(work(memory));
        });
        self.jobs.try_send(job).map_err(|_| AccountError::Busy)?;
        result.await.map_err(|_| AccountError::Internal("password hashing failed".into()))
    }
}

/// The most argon2 memory a stored hash may ask for (64 MiB): a hash written elsewhere
/// with a larger `m` is refused rather than allocated.
const MAX_BLOCKS: usize = 64 * 1024;

/// The PHC string of argon2id (this crate's defaults) over `password` and `salt`, computed in
/// `memory`.
fn hash_password(
    password: &[u8],
    salt: &SaltString,
    memory: &mut Vec<Block>,
) -> Result<String, argon2::password_hash::Error> {
    let argon = Argon2::default();
    let params = argon.params().clone();
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_bytes)?;
    memory.resize(params.block_count(), Block::default());
    let length = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(length, |out| {
        Ok(argon.hash_password_into_with_memory(password, salt_bytes, out, &mut memory[..])?)
    })?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored`, computed in `memory`.
fn verify_password(password: &[u8], stored: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(phc) = PasswordHash::new(stored) else { return false };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(phc.algorithm), Params::try_from(&phc))
    else {
        return false;
    };
    let version = match phc.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else { return false };
    if params.block_count() > MAX_BLOCKS {
        return false;
    }
    memory.resize(params.block_count(), Block::default());
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt_bytes, &mut out, &mut memory[..])
        .is_ok()
        && crate::secret::constant_time_eq(&out, expected.as_bytes())
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
        fanout: Arc<dyn Fanout>,
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
            fanout,
            settings,
            hashers: Arc::new(Hashers::start(cores)),
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

    /// Whether `name` belongs to a configured identity (a `[auth] users` login or a
    /// `[authorization] send_by_user` principal), which no one may register.
    fn reserved(&self, name: &str) -> bool {
        let same = |other: &str| other.eq_ignore_ascii_case(name);
        self.settings.auth.users.iter().any(|u| same(&u.login))
            || self.settings.auth.operators.iter().any(|o| same(o))
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
        if self.settings.jwt.algorithm != JwtAlgorithm::HS256 {
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
            .hashers
            .run(move |memory| hash_password(password.as_bytes(), &salt, memory))
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
        if self.settings.jwt.algorithm != JwtAlgorithm::HS256 {
            return Err(AccountError::ExternalTokens);
        }
        self.attempt(client, &credentials.username)?;
        // A configured login signs in with its passcode (its name cannot be registered).
        let configured = self.settings.auth.users.iter().find(|u| u.login == credentials.username);
        if let Some(configured) = configured {
            let given = credentials.password.as_bytes();
            return if crate::secret::constant_time_eq(configured.passcode.as_bytes(), given) {
                self.issue(&configured.login)
            } else {
                Err(AccountError::BadCredentials)
            };
        }
        let user = self.storage.user(&credentials.username).await?;
        let stored =
            user.as_ref().map_or_else(|| DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let password = credentials.password;
        let valid = self
            .hashers
            .run(move |memory| verify_password(password.as_bytes(), &stored, memory))
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
        Ok(self.fanout.revoke_token(jti))
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

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[test]
    fn hashes_are_standard_phc_strings_in_reused_memory() {
        let mut memory = Vec::new();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let ours = hash_password(b"correct horse", &salt, &mut memory).unwrap();
        // The argon2 crate's own hash and verification agree with ours.
        let theirs = Argon2::default().hash_password(b"correct horse", &salt).unwrap();
        assert_eq!(ours, theirs.to_string());
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        assert!(verify_password(b"correct horse", &ours, &mut memory));
        assert!(!verify_password(b"wrong horse", &ours, &mut memory));
        assert!(!verify_password(b"x", "not a phc string", &mut memory));
        // The dummy hash of unknown users parses, so both paths do the same work.
        assert!(!verify_password(b"x", DUMMY_HASH, &mut memory));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert_eq!(memory.len(), Params::default().block_count(), "allocated once, kept");
    }
}
