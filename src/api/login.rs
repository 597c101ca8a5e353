//! `POST /api/Auth/Token`: trades `userName` + `apiKey` for a bearer token.

use serde_json::Value;

use super::{Ctx, Reply};
use crate::error::ApiError;
use crate::json::push_member;
use crate::time::rfc3339_ms;

pub async fn token(mut ctx: Ctx<'_>) -> Result<Reply, ApiError> {
    let body = ctx.take_body()?.value;
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::InvalidInput("the body must be a JSON object".into()))?;
    let field = |name: &str| match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(ApiError::InvalidInput(format!("{name} is required"))),
        Some(_) => Err(ApiError::InvalidInput(format!("{name} must be a string"))),
    };
    let (user, key) = (field("userName")?, field("apiKey")?);
    let (token, expires) = ctx
        .app
        .auth
        .login(&ctx.app.store, &user, &key, ctx.info.peer)
        .await?;
    let mut m = Vec::with_capacity(160);
    push_member(&mut m, "token", format!("\"{token}\"").as_bytes());
    push_member(
        &mut m,
        "expires",
        format!("\"{}\"", rfc3339_ms(expires)).as_bytes(),
    );
    Ok(Reply::ok(m))
}
