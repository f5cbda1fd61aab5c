//! Stage: REST answers. Which `/api` paths name a route the mock serves, and the bodies of the
//! routes that describe the bot (`/users/@me`, the application). The objects agree with READY
//! (`d.user`, `d.application`): the ids, names and flags come from the same constants in
//! `events`, so a client that compares REST with the gateway sees one bot.
//!
//! Must not: perform I/O or read shared state; `http` authenticates, counts guilds and sends.

use serde_json::{Value, json};

use crate::events::{
    APPLICATION_FLAGS, APPLICATION_OWNER_ID, BOT_DISCRIMINATOR, BOT_USER_ID, BOT_USERNAME,
};
use crate::rng::mix64;

/// API versions whose prefix (`/api/v9`, `/api/v10`) the mock strips. The routes it serves
/// answer the same in both; `/api` without a version is accepted as well (discord.js sends a
/// few routes unversioned). Other versions, e.g. the discontinued v6 to v8, are not served.
const API_VERSIONS: [&str; 2] = ["9", "10"];

/// A REST route the mock serves. Each one answers `GET` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// `/gateway`: the gateway URL. Needs no token, as on Discord.
    Gateway,
    /// `/gateway/bot`: URL, recommended shards, `session_start_limit`.
    GatewayBot,
    /// `/users/@me`: the bot's user object.
    CurrentUser,
    /// `/applications/@me` (Get Current Application, what discord.js's
    /// `ClientApplication#fetch` calls): the application object.
    CurrentApplication,
    /// `/oauth2/applications/@me` (Get Current Bot Application Information): the same object.
    OAuth2CurrentApplication,
}

impl Route {
    /// The route `path` names, where `path` is what follows `/api` (e.g. `/v10/users/@me`);
    /// `None` for an unknown route or an API version the mock does not serve. A `%40` in the
    /// path is read as `@` (some HTTP clients escape it); the query string is not part of
    /// `path` and is ignored.
    pub(super) fn parse(after_api: &str) -> Option<Route> {
        let route = match version_segment(after_api) {
            Some((version, route)) if API_VERSIONS.contains(&version) => route,
            Some(_) => return None,
            None => after_api,
        };
        let unescaped;
        let route = if route.contains("%40") {
            unescaped = route.replace("%40", "@");
            unescaped.as_str()
        } else {
            route
        };
        match route {
            "/gateway" => Some(Route::Gateway),
            "/gateway/bot" => Some(Route::GatewayBot),
            "/users/@me" => Some(Route::CurrentUser),
            "/applications/@me" => Some(Route::CurrentApplication),
            "/oauth2/applications/@me" => Some(Route::OAuth2CurrentApplication),
            _ => None,
        }
    }

    /// The route as Discord's documentation writes it, for ledger details and logs.
    pub(super) fn template(self) -> &'static str {
        match self {
            Route::Gateway => "/gateway",
            Route::GatewayBot => "/gateway/bot",
            Route::CurrentUser => "/users/@me",
            Route::CurrentApplication => "/applications/@me",
            Route::OAuth2CurrentApplication => "/oauth2/applications/@me",
        }
    }

    /// Whether the route needs `Authorization: Bot <token>`.
    pub(super) fn needs_token(self) -> bool {
        self != Route::Gateway
    }
}

/// Splits `/v<digits>/rest` into (`digits`, `/rest`); `None` when the first segment is not a
/// version (an unversioned path).
fn version_segment(after_api: &str) -> Option<(&str, &str)> {
    let versioned = after_api.strip_prefix("/v")?;
    let end = versioned.find('/').unwrap_or(versioned.len());
    let (version, route) = versioned.split_at(end);
    (!version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())).then_some((version, route))
}

/// `GET /users/@me` with a bot token: the bot's full user object (READY's `user` plus the
/// profile fields REST adds).
pub(super) fn current_user() -> Value {
    let mut user = bot_user();
    if let Value::Object(fields) = &mut user {
        fields.extend([
            ("mfa_enabled".to_owned(), json!(true)),
            ("locale".to_owned(), json!("en-US")),
            ("premium_type".to_owned(), json!(0)),
            ("email".to_owned(), Value::Null),
            ("verified".to_owned(), json!(true)),
            ("bio".to_owned(), json!("")),
        ]);
    }
    user
}

/// `GET /applications/@me` and `/oauth2/applications/@me` with a bot token: the bot's
/// application, owned by a person (so `team` is null), public, with `approximate_guild_count`
/// the mock's current guild count.
pub(super) fn application(guild_count: usize) -> Value {
    json!({
        "id": BOT_USER_ID.to_string(),
        "name": BOT_USERNAME,
        "icon": null,
        "description": "",
        "summary": "",
        "type": null,
        "cover_image": null,
        "is_monetized": false,
        "is_verified": false,
        "is_discoverable": false,
        "bot_public": true,
        "bot_require_code_grant": false,
        "verify_key": verify_key(),
        "flags": APPLICATION_FLAGS,
        "hook": true,
        "storefront_available": false,
        "redirect_uris": [],
        "interactions_endpoint_url": null,
        "role_connections_verification_url": null,
        "event_webhooks_url": null,
        "event_webhooks_status": 1,
        "event_webhooks_types": [],
        "tags": [],
        "integration_types_config": { "0": {} },
        "approximate_guild_count": guild_count,
        "approximate_user_install_count": 0,
        "approximate_user_authorization_count": 0,
        "interactions_event_types": [],
        "interactions_version": 1,
        "explicit_content_filter": 0,
        "rpc_application_state": 0,
        "store_application_state": 1,
        "creator_monetization_state": 1,
        "verification_state": 1,
        "integration_public": true,
        "integration_require_code_grant": false,
        "discoverability_state": 1,
        "monetization_state": 1,
        "owner": owner_user(),
        "team": null,
        "bot": bot_user(),
    })
}

/// The bot's public user object (the application's `bot`; `/users/@me` adds to it).
fn bot_user() -> Value {
    json!({
        "id": BOT_USER_ID.to_string(),
        "username": BOT_USERNAME,
        "avatar": null,
        "discriminator": BOT_DISCRIMINATOR,
        "public_flags": 0,
        "flags": 0,
        "bot": true,
        "banner": null,
        "accent_color": null,
        "global_name": null,
        "avatar_decoration_data": null,
        "collectibles": null,
        "display_name_styles": null,
        "banner_color": null,
        "clan": null,
        "primary_guild": null,
    })
}

/// The application's owner: a person with a unique username (discriminator `"0"`).
fn owner_user() -> Value {
    json!({
        "id": APPLICATION_OWNER_ID.to_string(),
        "username": "shardgate-owner",
        "avatar": null,
        "discriminator": "0",
        "public_flags": 0,
        "flags": 0,
        "banner": null,
        "accent_color": null,
        "global_name": "Shardgate Owner",
        "avatar_decoration_data": null,
        "collectibles": null,
        "display_name_styles": null,
        "banner_color": null,
        "clan": null,
        "primary_guild": null,
    })
}

/// The application's Ed25519 public key as Discord shows it: 64 hex digits (here derived from
/// the application id, so the same in every run).
fn verify_key() -> String {
    (0..4u64)
        .map(|part| format!("{:016x}", mix64(BOT_USER_ID ^ part)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_escapes_name_the_same_route() {
        for path in [
            "/v10/users/@me",
            "/v9/users/@me",
            "/users/@me",
            "/v10/users/%40me",
        ] {
            assert_eq!(Route::parse(path), Some(Route::CurrentUser), "{path}");
        }
        assert_eq!(
            Route::parse("/v10/oauth2/applications/@me"),
            Some(Route::OAuth2CurrentApplication)
        );
        assert_eq!(
            Route::parse("/applications/@me"),
            Some(Route::CurrentApplication)
        );
        assert_eq!(Route::parse("/v10/gateway"), Some(Route::Gateway));
    }

    #[test]
    fn unknown_versions_and_routes_are_not_served() {
        for path in [
            "",
            "/",
            "/v8/users/@me",
            "/v11/gateway/bot",
            "/v/users/@me",
            "/v10",
            "/v10/",
            "/v10/users/@me/",
            "/v10/users/123",
            "/v10/v10/users/@me",
            "/voice/regions",
        ] {
            assert_eq!(Route::parse(path), None, "{path}");
        }
    }

    #[test]
    fn only_gateway_is_open() {
        assert!(!Route::Gateway.needs_token());
        for route in [
            Route::GatewayBot,
            Route::CurrentUser,
            Route::CurrentApplication,
            Route::OAuth2CurrentApplication,
        ] {
            assert!(route.needs_token(), "{route:?}");
        }
    }

    #[test]
    fn application_names_the_bot_and_its_owner() {
        let application = application(3);
        assert_eq!(application["id"], BOT_USER_ID.to_string());
        assert_eq!(application["bot"]["id"], application["id"]);
        assert_eq!(application["bot"]["username"], application["name"]);
        assert_eq!(application["approximate_guild_count"], 3);
        assert_eq!(application["owner"]["discriminator"], "0");
        let key = application["verify_key"].as_str().unwrap_or_default();
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
