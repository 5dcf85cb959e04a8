//! The demo upstream (`[demo]`): a real app on its own socket, reached through the proxy, that
//! shows what the gateway injected. It is what a newcomer's first `cargo run` ends on.

mod common;

use common::*;

async fn gateway_with_demo() -> Gateway {
    let demo = format!("127.0.0.1:{}", free_port());
    let section = format!("[demo]\nenabled = true\nlisten = \"{demo}\"\n\n");
    Gateway::start_with_edited(
        GatewayOptions::new()
            .session_setting("inject_user_email = true")
            .session_setting("inject_session_id = true")
            .routes(vec![
                RouteSpec::required("/", Upstream::Addr(demo.clone())),
                RouteSpec::public("/static/", Upstream::Addr(demo.clone())),
            ]),
        move |config| config.replacen("[[route]]", &format!("{section}[[route]]"), 1),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_the_injected_identity() {
    let gateway = gateway_with_demo().await;
    let response = gateway
        .get_with("/", None, &[("Accept", "text/html")])
        .await;
    assert_eq!(response.status(), 302, "a browser is sent to sign in first");

    let user = gateway.signed_in_user().await;
    let response = gateway.get("/", Some(&user.token)).await;
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("Hello from the demo app"), "{page}");
    assert!(page.contains(&user.id), "the page shows X-User-Id: {page}");
    assert!(
        page.contains(&user.email),
        "the page shows X-User-Email: {page}"
    );
    assert!(
        page.contains("/auth/devices"),
        "links to the device dashboard"
    );

    // A forged identity sent by the client is not what the demo app sees.
    let response = gateway
        .get_with("/", None, &[("X-User-Id", "forged-by-client")])
        .await;
    assert_eq!(response.status(), 401);
    let public = gateway.get("/static/hello.txt", None).await;
    assert_eq!(public.status(), 200);
}
