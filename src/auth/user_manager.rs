//! User management (docs/operations/running.md "Users and keys"): add, list, rotate-key, set, remove. The same
//! code serves the CLI when the server is stopped (it opens the store itself) and the
//! admin socket when the server runs; in the latter case every change is also applied
//! to the live auth tables, so it takes effect for the very next HTTP request.

use crate::auth::usage::Usage;
use crate::auth::{generate_key, hash_key, valid_name, Auth};
use crate::store::users::{Role, UsageRecord, UserRecord};
use crate::store::Store;
use crate::time::{rfc3339_ms, Clock};

/// A failed user-management operation; the message is for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store failure reads as `ApiError` shows it to an operator: the log detail (the
/// cause chain) of a storage failure, else the message.
impl From<crate::store::Error> for UserError {
    fn from(e: crate::store::Error) -> UserError {
        UserError::from(crate::error::ApiError::from(e))
    }
}

impl From<crate::error::ApiError> for UserError {
    fn from(e: crate::error::ApiError) -> UserError {
        UserError(match e.log_detail() {
            Some(d) => d.to_string(),
            None => e.message().into_owned(),
        })
    }
}

/// Changes to apply with `user set`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub role: Option<Role>,
    /// `Some(None)` clears the personal limit.
    pub daily_limit: Option<Option<u64>>,
    pub disabled: Option<bool>,
}

/// A new API key (shown once, never stored) and the user it belongs to, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub key: String,
    pub user: UserRecord,
}

/// One row of `user list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub user: UserRecord,
    pub usage: UsageRecord,
}

/// User management over a store, optionally mirrored into a running server. (Not
/// the admin socket, `ops/admin.rs`, which is one of its callers.)
pub struct UserManager<'a> {
    store: &'a Store,
    live: Option<(&'a Auth, &'a Usage)>,
    /// Dates new keys and users, and the UTC day of the counters `list` shows.
    clock: Clock,
}

impl<'a> UserManager<'a> {
    /// For the CLI with the server stopped.
    pub fn offline(store: &'a Store, clock: Clock) -> UserManager<'a> {
        UserManager {
            store,
            live: None,
            clock,
        }
    }

    /// For the admin socket of a running server.
    pub fn live(
        store: &'a Store,
        auth: &'a Auth,
        usage: &'a Usage,
        clock: Clock,
    ) -> UserManager<'a> {
        UserManager {
            store,
            live: Some((auth, usage)),
            clock,
        }
    }

    fn existing(&self, name: &str) -> Result<UserRecord, UserError> {
        self.store
            .user(name)?
            .ok_or_else(|| UserError(format!("no user named {name:?}")))
    }

    fn publish(&self, name: &str, user: Option<UserRecord>) {
        if let Some((auth, usage)) = self.live {
            if user.is_none() {
                usage.remove(name);
            }
            auth.user_changed(name, user);
        }
    }

    /// Creates a user; returns its API key (shown once, never stored).
    pub fn add(
        &self,
        name: &str,
        account: &str,
        role: Role,
        daily_limit: Option<u64>,
    ) -> Result<NewKey, UserError> {
        if !valid_name(name) {
            return Err(UserError(format!(
                "invalid user name {name:?}: use 1-64 of A-Z a-z 0-9 . _ @ -"
            )));
        }
        if !valid_name(account) {
            return Err(UserError(format!(
                "invalid account name {account:?}: use 1-64 of A-Z a-z 0-9 . _ @ -"
            )));
        }
        if self.store.user(name)?.is_some() {
            return Err(UserError(format!("a user named {name:?} already exists")));
        }
        let key = generate_key();
        let now = self.clock.wall_ms();
        let user = UserRecord {
            name: name.to_string(),
            account: account.to_string(),
            role,
            daily_limit,
            disabled: false,
            key_hash: hash_key(&key)?,
            key_generation: 1,
            key_created: now,
            created: now,
        };
        self.store.put_user(&user, false)?;
        self.publish(name, Some(user.clone()));
        Ok(NewKey { key, user })
    }

    /// Every user with its counters.
    pub fn list(&self) -> Result<Vec<UserRow>, UserError> {
        let stored: std::collections::HashMap<String, UsageRecord> =
            self.store.usage_records()?.into_iter().collect();
        let now = self.clock.now();
        Ok(self
            .store
            .users()?
            .into_iter()
            .map(|user| {
                let usage = match self.live {
                    Some((_, usage)) => usage.get(&user.name, now),
                    None => {
                        // As the server would count on (usage.rs): only a later UTC
                        // day starts over, a clock set back does not.
                        let mut u = stored.get(&user.name).copied().unwrap_or_default();
                        if crate::time::day_of(now.wall_ms) > u.day {
                            u.daily = 0;
                        }
                        u
                    }
                };
                UserRow { user, usage }
            })
            .collect())
    }

    /// Gives a user a new key; the old key and every token issued from it die at once.
    pub fn rotate_key(&self, name: &str) -> Result<NewKey, UserError> {
        let mut user = self.existing(name)?;
        let key = generate_key();
        user.key_hash = hash_key(&key)?;
        user.key_generation += 1;
        user.key_created = self.clock.wall_ms();
        self.store.put_user(&user, true)?;
        self.publish(name, Some(user.clone()));
        Ok(NewKey { key, user })
    }

    /// Changes role, daily limit or the disabled flag; disabling revokes the tokens.
    pub fn set(&self, name: &str, changes: &UserChanges) -> Result<UserRecord, UserError> {
        let mut user = self.existing(name)?;
        if let Some(role) = changes.role {
            user.role = role;
        }
        if let Some(limit) = changes.daily_limit {
            user.daily_limit = limit;
        }
        if let Some(disabled) = changes.disabled {
            user.disabled = disabled;
        }
        self.store.put_user(&user, user.disabled)?;
        self.publish(name, Some(user.clone()));
        Ok(user)
    }

    /// Removes a user and its tokens; its account's groups stay.
    pub fn remove(&self, name: &str) -> Result<(), UserError> {
        self.existing(name)?;
        self.store.remove_user(name)?;
        self.publish(name, None);
        Ok(())
    }
}

/// A user's fields for `--output json`: the names scripts rely on (camelCase, like the
/// API and the admin protocol); times as RFC 3339, absent limits as null. Never the
/// key hash.
fn user_json(user: &UserRecord) -> serde_json::Map<String, serde_json::Value> {
    let mut o = serde_json::Map::new();
    o.insert("name".into(), user.name.clone().into());
    o.insert("account".into(), user.account.clone().into());
    o.insert("role".into(), user.role.to_string().into());
    o.insert("dailyLimit".into(), user.daily_limit.into());
    o.insert("disabled".into(), user.disabled.into());
    o.insert("keyCreated".into(), rfc3339_ms(user.key_created).into());
    o
}

/// `user list --output json`: `{"users":[{…}]}` on one line, the columns of the table.
pub fn render_list_json(rows: &[UserRow]) -> String {
    let users: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut o = user_json(&r.user);
            o.insert("apiUsage".into(), r.usage.total.into());
            o.insert("apiDailyUsage".into(), r.usage.daily.into());
            o.insert(
                "lastUsed".into(),
                (r.usage.last_used > 0)
                    .then(|| rfc3339_ms(r.usage.last_used))
                    .into(),
            );
            serde_json::Value::Object(o)
        })
        .collect();
    format!("{}\n", serde_json::json!({ "users": users }))
}

/// `user add` / `rotate-key --output json`: the user and its new key (`apiKey`), on one
/// line; the only JSON output that holds a key.
pub fn render_key_json(new: &NewKey) -> String {
    let mut o = user_json(&new.user);
    o.insert("apiKey".into(), new.key.clone().into());
    format!("{}\n", serde_json::Value::Object(o))
}

/// Renders `user list` as aligned columns.
pub fn render_list(rows: &[UserRow]) -> String {
    let mut table: Vec<[String; 9]> = vec![[
        "NAME".into(),
        "ACCOUNT".into(),
        "ROLE".into(),
        "DAILY_LIMIT".into(),
        "DISABLED".into(),
        "API_USAGE".into(),
        "API_DAILY_USAGE".into(),
        "KEY_CREATED".into(),
        "LAST_USED".into(),
    ]];
    for r in rows {
        table.push([
            r.user.name.clone(),
            r.user.account.clone(),
            r.user.role.to_string(),
            r.user
                .daily_limit
                .map_or_else(|| "none".into(), |l| l.to_string()),
            r.user.disabled.to_string(),
            r.usage.total.to_string(),
            r.usage.daily.to_string(),
            rfc3339_ms(r.user.key_created),
            if r.usage.last_used > 0 {
                rfc3339_ms(r.usage.last_used)
            } else {
                "never".into()
            },
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, limit: Option<u64>, total: u64, last_used: i64) -> UserRow {
        UserRow {
            user: UserRecord {
                name: name.into(),
                account: "default".into(),
                role: Role::Write,
                daily_limit: limit,
                disabled: false,
                key_hash: "$argon2id$secret".into(),
                key_generation: 1,
                key_created: 0,
                created: 0,
            },
            usage: UsageRecord {
                total,
                day: 0,
                daily: total,
                last_used,
            },
        }
    }

    #[test]
    fn list_has_aligned_columns_and_no_secrets() {
        let out = render_list(&[
            row("admin", None, 12, 1_000),
            row("a-much-longer-name", Some(5), 0, 0),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME                ACCOUNT  ROLE   DAILY_LIMIT  DISABLED  API_USAGE  API_DAILY_USAGE  KEY_CREATED               LAST_USED"
        );
        assert_eq!(
            lines[1],
            "admin               default  write  none         false     12         12               1970-01-01T00:00:00.000Z  1970-01-01T00:00:01.000Z"
        );
        assert_eq!(
            lines[2],
            "a-much-longer-name  default  write  5            false     0          0                1970-01-01T00:00:00.000Z  never"
        );
        assert!(!out.contains("argon2"));
        assert_eq!(render_list(&[]).lines().count(), 1, "the header alone");
    }
}
