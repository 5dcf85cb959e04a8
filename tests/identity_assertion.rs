//! The signed identity assertion (contract §9): with `[assertion] enabled`, every request forwarded
//! on a protected route carries `X-Authgate-Assertion`, a short-lived JWT whose public keys are
//! at `/auth/.well-known/jwks.json`, so an upstream can check a request really came through the
//! gateway.
//!
//! Every assertion here is checked the way an upstream would, by a verifier written for these
//! tests and independent of the gateway's signing code (which is jsonwebtoken on ring): the JWS
//! is taken apart by hand and its signature checked with ed25519-dalek or p256 against the key
//! the JWKS publishes under the token's `kid`. The verifier is shown to refuse a tampered
//! payload, a key other than the signer's, and an expired token, so its acceptance means
//! something.
//!
//! Runs on both pairs: database keys live in Postgres or in the SQLite file.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

const HEADER: &str = "x-authgate-assertion";

// --- an independent verifier --------------------------------------------------------------------

/// A verified assertion: its JOSE header and its claims.
#[derive(Debug)]
struct Verified {
    header: Value,
    claims: Value,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn decode_part(part: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| format!("not base64url: {e}"))
}

fn json_part(part: &str) -> Result<Value, String> {
    serde_json::from_slice(&decode_part(part)?).map_err(|e| format!("not JSON: {e}"))
}

/// Checks `token` as an upstream would: its `kid` names a key in `jwks`, the signature over
/// `header.payload` is that key's, and it has not expired at `at` (unix seconds).
fn verify(token: &str, jwks: &Value, at: u64) -> Result<Verified, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header_part, payload_part, signature_part] = parts[..] else {
        return Err(format!("not a compact JWS: {} parts", parts.len()));
    };
    let header = json_part(header_part)?;
    let claims = json_part(payload_part)?;
    let signature = decode_part(signature_part)?;
    let kid = header["kid"].as_str().ok_or("no kid in the header")?;
    let key = jwks["keys"]
        .as_array()
        .ok_or("no keys array in the JWKS")?
        .iter()
        .find(|key| key["kid"] == kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let alg = header["alg"].as_str().ok_or("no alg")?;
    if key["alg"] != alg || key["use"] != "sig" {
        return Err(format!("the JWKS key is not an {alg} signing key: {key}"));
    }
    let message = format!("{header_part}.{payload_part}");
    let coordinate = |name: &str| -> Result<Vec<u8>, String> {
        decode_part(
            key[name]
                .as_str()
                .ok_or_else(|| format!("no {name} in the JWK"))?,
        )
    };
    match alg {
        "EdDSA" => {
            if key["kty"] != "OKP" || key["crv"] != "Ed25519" {
                return Err(format!("not an Ed25519 JWK: {key}"));
            }
            let x: [u8; 32] = coordinate("x")?
                .try_into()
                .map_err(|_| "x is not 32 bytes")?;
            let public = ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|e| e.to_string())?;
            let signature =
                ed25519_dalek::Signature::from_slice(&signature).map_err(|e| e.to_string())?;
            public
                .verify_strict(message.as_bytes(), &signature)
                .map_err(|_| "bad signature".to_string())?;
        }
        "ES256" => {
            use p256::ecdsa::signature::Verifier as _;
            if key["kty"] != "EC" || key["crv"] != "P-256" {
                return Err(format!("not a P-256 JWK: {key}"));
            }
            let (x, y) = (coordinate("x")?, coordinate("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("x and y must be 32 bytes".to_string());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            let public =
                p256::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|e| e.to_string())?;
            let signature =
                p256::ecdsa::Signature::from_slice(&signature).map_err(|e| e.to_string())?;
            public
                .verify(message.as_bytes(), &signature)
                .map_err(|_| "bad signature".to_string())?;
        }
        other => return Err(format!("unexpected alg {other}")),
    }
    let exp = claims["exp"].as_u64().ok_or("no exp")?;
    if exp <= at {
        return Err(format!("expired at {exp} (now {at})"));
    }
    Ok(Verified { header, claims })
}

// --- helpers ------------------------------------------------------------------------------------

/// A gateway started with `[assertion]` holding `lines`.
async fn start_with_assertion(options: GatewayOptions, lines: &str) -> Gateway {
    Gateway::start_with_edited(options, |text| format!("{text}\n[assertion]\n{lines}\n")).await
}

async fn jwks(gateway: &Gateway) -> Value {
    let response = gateway.get("/auth/.well-known/jwks.json", None).await;
    assert_eq!(response.status(), 200, "GET the JWKS");
    let cache = header(&response, "cache-control")
        .unwrap_or_default()
        .to_string();
    assert!(cache.contains("max-age"), "cacheable: {cache}");
    json_body(response).await
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| key["kid"].as_str().expect("kid").to_string())
        .collect()
}

/// GET `path` signed in, and the assertion the upstream received (`None` if it got none).
async fn assertion_for(gateway: &Gateway, path: &str, token: &str) -> Option<String> {
    let seen = echoed(gateway.get(path, Some(token)).await).await;
    assert!(seen.header_count(HEADER) <= 1, "one assertion at most");
    seen.header(HEADER).map(str::to_string)
}

/// The user id and session id `/auth/user/me` reports for `token`.
async fn who(gateway: &Gateway, token: &str) -> (String, String) {
    let me = json_body(gateway.get("/auth/user/me", Some(token)).await).await;
    (
        me["id"].as_str().expect("id").to_string(),
        me["session"]["id"]
            .as_str()
            .expect("session.id")
            .to_string(),
    )
}

/// `kid` of a key's raw public bytes: the gateway's documented rule.
fn expected_kid(public_key: &[u8]) -> String {
    sha256_hex_bytes(public_key)[..16].to_string()
}

fn sha256_hex_bytes(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex_string(&sha2::Sha256::digest(bytes))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SEC1 form (`BEGIN EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it) of a P-256
/// key: the `ECPrivateKey` inside its PKCS#8 `PrivateKeyInfo`.
fn sec1_pem(key: &rcgen::KeyPair) -> String {
    let pkcs8 = key.serialize_der();
    // One DER header at `at`: (where the content starts, its length).
    let header = |at: usize| -> (usize, usize) {
        let first = pkcs8[at + 1] as usize;
        if first < 0x80 {
            return (at + 2, first);
        }
        let count = first & 0x7f;
        let length = pkcs8[at + 2..at + 2 + count]
            .iter()
            .fold(0, |length, &byte| (length << 8) | byte as usize);
        (at + 2 + count, length)
    };
    // SEQUENCE { version INTEGER, algorithm SEQUENCE, privateKey OCTET STRING }.
    let (mut at, _) = header(0);
    for _ in 0..2 {
        let (start, length) = header(at);
        at = start + length;
    }
    assert_eq!(pkcs8[at], 0x04, "privateKey is an OCTET STRING");
    let (start, length) = header(at);
    let body = base64::engine::general_purpose::STANDARD.encode(&pkcs8[start..start + length]);
    let lines: Vec<String> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect();
    format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

/// Replaces `path` with `text` the way deploy tools do (written beside it, renamed over it).
fn replace_file(path: &Path, text: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

// --- what an upstream gets ----------------------------------------------------------------------

#[tokio::test]
async fn protected_requests_carry_an_assertion_an_independent_verifier_accepts() {
    let gateway = start_with_assertion(GatewayOptions::new(), "enabled = true").await;
    let user = gateway.signed_in_user().await;
    let (user_id, session_id) = who(&gateway, &user.token).await;
    let token = assertion_for(&gateway, "/dashboard", &user.token)
        .await
        .expect("a protected request carries the assertion");
    let keys = jwks(&gateway).await;
    let verified = verify(&token, &keys, now()).unwrap_or_else(|e| panic!("{e}: {token}"));
    let claims = &verified.claims;
    assert_eq!(verified.header["alg"], "EdDSA");
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(claims["email"], user.email.as_str());
    assert_eq!(claims["sid"], session_id.as_str());
    assert_eq!(
        claims["aud"], "/",
        "a host-less route's audience is its prefix"
    );
    assert_eq!(claims["iss"], gateway.public_origin().as_str());
    assert_eq!(claims["roles"], json!([]));
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > iat && exp - iat <= 60, "iat {iat}, exp {exp}");
    assert!(iat.abs_diff(now()) <= 5, "iat is now");
    let jwk = &keys["keys"][0];
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );

    // Reused while fresh: the next request costs no signature.
    let again = assertion_for(&gateway, "/other", &user.token).await;
    assert_eq!(again.as_deref(), Some(token.as_str()));
    // Another session of the same user gets its own.
    let other = gateway.login(&user.email, &user.password).await;
    let theirs = assertion_for(&gateway, "/dashboard", &other).await.unwrap();
    let theirs = verify(&theirs, &keys, now()).unwrap();
    assert_eq!(theirs.claims["sub"], user_id.as_str());
    assert_ne!(theirs.claims["sid"], session_id.as_str());

    // Public routes: nobody signed in, nothing asserted.
    let public = echoed(gateway.get("/public/page", Some(&user.token)).await).await;
    assert_eq!(public.header(HEADER), None);
}

#[tokio::test]
async fn the_audience_is_the_routes_host_and_narrower_routes_add_their_prefix() {
    let routes = vec![
        RouteSpec::required("/", Upstream::Echo),
        RouteSpec::required("/", Upstream::Echo).with("host = \"app.example\""),
        RouteSpec::required("/admin/", Upstream::Echo).with("host = \"app.example\""),
        RouteSpec::required("/api/", Upstream::Echo),
    ];
    let gateway =
        start_with_assertion(GatewayOptions::new().routes(routes), "enabled = true").await;
    let user = gateway.signed_in_user().await;
    let keys = jwks(&gateway).await;
    let audience = |response: EchoedRequest| {
        let token = response.header(HEADER).expect("assertion").to_string();
        verify(&token, &keys, now()).unwrap().claims["aud"].clone()
    };
    let on_host = gateway
        .get_with("/x", Some(&user.token), &[("host", "app.example")])
        .await;
    assert_eq!(audience(echoed(on_host).await), "app.example");
    // Another app on the same host: an assertion for one must not pass at the other.
    let on_admin = gateway
        .get_with("/admin/x", Some(&user.token), &[("host", "app.example")])
        .await;
    assert_eq!(audience(echoed(on_admin).await), "app.example/admin/");
    let on_api = gateway.get("/api/v1", Some(&user.token)).await;
    assert_eq!(audience(echoed(on_api).await), "/api/");
}

#[tokio::test]
async fn the_verifier_refuses_tampered_foreign_and_expired_assertions() {
    let gateway =
        start_with_assertion(GatewayOptions::new(), "enabled = true\nlifetime = \"2s\"").await;
    let user = gateway.signed_in_user().await;
    let token = assertion_for(&gateway, "/", &user.token).await.unwrap();
    let keys = jwks(&gateway).await;
    let verified = verify(&token, &keys, now()).expect("the real one verifies");
    let (iat, exp) = (
        verified.claims["iat"].as_u64().unwrap(),
        verified.claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 2, "assertion.lifetime");

    // A payload changed after signing (another user's email) keeps the signature: refused.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = verified.claims.clone();
    claims["email"] = json!("admin@example.com");
    let forged_payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(
        verify(&tampered, &keys, now()).unwrap_err(),
        "bad signature"
    );

    // The same kid, another key (as a verifier holding a wrong key would see it): refused.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let mut wrong = keys.clone();
    wrong["keys"][0]["x"] = json!(URL_SAFE_NO_PAD.encode(stranger.as_bytes()));
    assert_eq!(verify(&token, &wrong, now()).unwrap_err(), "bad signature");

    // Once `exp` has passed: refused; the gateway then hands out a fresh one.
    tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now()) + 1)).await;
    let error = verify(&token, &keys, now()).unwrap_err();
    assert!(error.starts_with("expired"), "{error}");
    let fresh = assertion_for(&gateway, "/", &user.token).await.unwrap();
    assert_ne!(fresh, token);
    verify(&fresh, &keys, now()).expect("a fresh assertion after expiry");
}

#[tokio::test]
async fn client_sent_assertions_never_reach_the_upstream_or_come_back() {
    let gateway = start_with_assertion(GatewayOptions::new(), "enabled = true").await;
    let user = gateway.signed_in_user().await;
    let keys = jwks(&gateway).await;
    let forged = [
        ("X-Authgate-Assertion", "forged.token.one"),
        ("x-authgate-assertion", "forged.token.two"),
        ("X_Authgate_Assertion", "forged.token.three"),
    ];
    let public = echoed(gateway.get_with("/public/x", None, &forged).await).await;
    assert_eq!(public.header(HEADER), None);
    assert_eq!(public.header("x_authgate_assertion"), None);
    let protected = echoed(gateway.get_with("/x", Some(&user.token), &forged).await).await;
    assert_eq!(
        protected.header_count(HEADER),
        1,
        "{:?}",
        protected.header_list
    );
    assert_eq!(protected.header("x_authgate_assertion"), None);
    verify(protected.header(HEADER).unwrap(), &keys, now()).expect("the gateway's own");

    // An upstream cannot teach the client one either.
    let reflected = gateway
        .get_with(
            "/public/x",
            None,
            &[(
                ECHO_RESPONSE_HEADER,
                "X-Authgate-Assertion: from.the.upstream",
            )],
        )
        .await;
    assert_eq!(reflected.status(), 200);
    assert_eq!(header(&reflected, HEADER), None);
}

#[tokio::test]
async fn routes_that_opt_out_and_disabled_gateways_send_no_assertion() {
    let routes = vec![
        RouteSpec::required("/", Upstream::Echo),
        RouteSpec::required("/legacy/", Upstream::Echo).with("assertion = false"),
    ];
    let gateway =
        start_with_assertion(GatewayOptions::new().routes(routes), "enabled = true").await;
    let user = gateway.signed_in_user().await;
    assert!(assertion_for(&gateway, "/app", &user.token).await.is_some());
    assert_eq!(
        assertion_for(&gateway, "/legacy/x", &user.token).await,
        None
    );

    // Off by default: nothing signed, and an empty (but valid) JWKS.
    let plain = Gateway::start().await;
    let user = plain.signed_in_user().await;
    assert_eq!(assertion_for(&plain, "/app", &user.token).await, None);
    assert_eq!(jwks(&plain).await, json!({"keys": []}));
}

#[tokio::test]
async fn es256_assertions_verify() {
    let gateway = start_with_assertion(
        GatewayOptions::new(),
        "enabled = true\nalgorithm = \"ES256\"",
    )
    .await;
    let user = gateway.signed_in_user().await;
    let keys = jwks(&gateway).await;
    let jwk = &keys["keys"][0];
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert!(jwk["y"].is_string());
    let token = assertion_for(&gateway, "/", &user.token).await.unwrap();
    let verified = verify(&token, &keys, now()).unwrap_or_else(|e| panic!("{e}: {token}"));
    assert_eq!(verified.header["alg"], "ES256");
    assert_eq!(verified.claims["email"], user.email.as_str());
}

// --- keys ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_key_file_signs_and_a_replaced_one_keeps_the_old_key_published() {
    let dir = TempDir::new();
    let key_path = dir.path.join("assertion.pem");
    let first = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(&key_path, first.serialize_pem()).unwrap();
    let gateway = start_with_assertion(
        GatewayOptions::new(),
        &format!(
            "enabled = true\nkey_file = {:?}",
            key_path.display().to_string()
        ),
    )
    .await;
    let first_kid = expected_kid(first.public_key_raw());
    assert_eq!(kids(&jwks(&gateway).await), [first_kid.as_str()]);
    let user = gateway.signed_in_user().await;
    let token = assertion_for(&gateway, "/", &user.token).await.unwrap();
    let verified = verify(&token, &jwks(&gateway).await, now()).unwrap();
    assert_eq!(verified.header["kid"], first_kid.as_str());

    // A new file and SIGHUP: signed with the new key at once, the old one still published.
    let second = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    replace_file(&key_path, &second.serialize_pem());
    gateway.signal("HUP");
    let second_kid = expected_kid(second.public_key_raw());
    let published = eventually(
        Duration::from_secs(15),
        "the new key in the JWKS",
        || async {
            let keys = jwks(&gateway).await;
            kids(&keys).contains(&second_kid).then_some(keys)
        },
    )
    .await;
    assert!(
        kids(&published).contains(&first_kid),
        "the old key stays published"
    );
    let token = assertion_for(&gateway, "/", &user.token).await.unwrap();
    let verified = verify(&token, &published, now()).unwrap();
    assert_eq!(verified.header["kid"], second_kid.as_str());
}

#[tokio::test]
async fn a_sec1_p256_key_file_signs_es256() {
    let dir = TempDir::new();
    let key_path = dir.path.join("assertion.pem");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&key_path, sec1_pem(&key)).unwrap();
    let gateway = start_with_assertion(
        GatewayOptions::new(),
        &format!(
            "enabled = true\nalgorithm = \"ES256\"\nkey_file = {:?}",
            key_path.display().to_string()
        ),
    )
    .await;
    let keys = jwks(&gateway).await;
    assert_eq!(kids(&keys), [expected_kid(key.public_key_raw())]);
    let user = gateway.signed_in_user().await;
    let token = assertion_for(&gateway, "/", &user.token).await.unwrap();
    verify(&token, &keys, now()).expect("ES256 from a SEC1 P-256 file");
}

#[tokio::test]
async fn rotation_through_the_cli_switches_keys_and_keeps_the_old_one_published() {
    let mut gateway = start_with_assertion(GatewayOptions::new(), "enabled = true").await;
    let user = gateway.signed_in_user().await;
    let token = assertion_for(&gateway, "/", &user.token).await.unwrap();
    let keys = jwks(&gateway).await;
    let first_kid = verify(&token, &keys, now()).unwrap().header["kid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(kids(&keys), [first_kid.as_str()]);

    // The key lives with the gateway's data: a restart signs with the same one. (A new
    // sign-in: the embedded pair's live sessions end with the process.)
    gateway.restart().await;
    assert_eq!(kids(&jwks(&gateway).await), [first_kid.as_str()]);
    let session = gateway.login(&user.email, &user.password).await;
    let token = assertion_for(&gateway, "/", &session).await.unwrap();
    let after_restart = verify(&token, &jwks(&gateway).await, now()).unwrap();
    assert_eq!(after_restart.header["kid"], first_kid.as_str());

    let output = gateway_command()
        .args(["assertion", "rotate", "--config"])
        .arg(&gateway.config_path)
        .current_dir(gateway.dir())
        .output()
        .expect("run authgate assertion rotate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rotate failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 key(s) retired"), "{stdout}");

    // Within a few seconds the running gateway signs with the new key; the old one stays
    // published, so assertions signed just before the rotation still verify.
    let (token, keys) = eventually(Duration::from_secs(20), "a new signing key", || async {
        let token = assertion_for(&gateway, "/", &session).await?;
        let keys = jwks(&gateway).await;
        let verified = verify(&token, &keys, now()).ok()?;
        (verified.header["kid"] != first_kid.as_str()).then_some((token, keys))
    })
    .await;
    assert!(
        kids(&keys).contains(&first_kid),
        "retired key still published: {keys}"
    );
    assert_eq!(kids(&keys).len(), 2);
    verify(&token, &keys, now()).unwrap();
}

#[tokio::test]
async fn a_key_file_that_does_not_load_stops_the_start_with_the_key_named() {
    let dir = TempDir::new();
    let key_path = dir.path.join("missing.pem");
    let text = GatewayOptions::new().render(&RenderTarget::for_check());
    let output = run_check(&format!(
        "{text}\n[assertion]\nenabled = true\nkey_file = {:?}\n",
        key_path.display().to_string()
    ));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("assertion.key_file") && stderr.contains("cannot read"),
        "{stderr}"
    );
}
