//! The real-browser harness: headless Chromium driven through ChromeDriver (WebDriver), with
//! the `fantoccini` client.
//!
//! - Each [`Browser`] is one "browser context": its own `chromedriver` process on a free port,
//!   its own WebDriver session and its own fresh `--user-data-dir`, so cookies are never shared.
//! - Missing Chromium or ChromeDriver is a panic that says what to install, never a skip.
//! - [`browser_test`] runs a test body in its own task. If the body panics (any assertion,
//!   anywhere), every browser the test opened is photographed into
//!   `target/browser-failures/<test>[-<browser>].png` and the panic message names the files.
//! - Processes are ended on Drop: the WebDriver session is deleted (Chromium quits), then the
//!   chromedriver's own process group is killed.
//!
//! Paths can be overridden with `AUTHGATE_CHROMIUM` and `AUTHGATE_CHROMEDRIVER`.

#![allow(dead_code)]

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long one page-state wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

const INSTALL_HINT: &str = "install them with `apt-get install -y chromium chromium-driver`";

/// The repository root (where `docs/` and `target/` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where failure screenshots go.
pub fn failure_dir() -> PathBuf {
    repo_root().join("target").join("browser-failures")
}

fn find_program(env_var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env_var) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let search_path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&search_path).collect();
    dirs.push(PathBuf::from("/usr/bin"));
    dirs.push(PathBuf::from("/usr/lib/chromium"));
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The Chromium binary, or a panic naming what to install.
pub fn chromium_binary() -> PathBuf {
    find_program("AUTHGATE_CHROMIUM", &["chromium", "chromium-browser"]).unwrap_or_else(|| {
        panic!(
            "the browser tests need Chromium, and no `chromium` was found in PATH \
             (or AUTHGATE_CHROMIUM): {INSTALL_HINT}"
        )
    })
}

/// The ChromeDriver binary, or a panic naming what to install.
pub fn chromedriver_binary() -> PathBuf {
    find_program("AUTHGATE_CHROMEDRIVER", &["chromedriver"]).unwrap_or_else(|| {
        panic!(
            "the browser tests need ChromeDriver, and no `chromedriver` was found in PATH \
             (or AUTHGATE_CHROMEDRIVER): {INSTALL_HINT}"
        )
    })
}

fn random_suffix() -> String {
    use rand::Rng as _;
    let bytes: [u8; 6] = rand::thread_rng().gen();
    hex::encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// ChromeDriver process
// ---------------------------------------------------------------------------------------------

/// One `chromedriver` process, in its own process group (Chromium inherits it).
struct Driver {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Driver {
    /// chromedriver listens on the port on both 127.0.0.1 and ::1 and exits when either is
    /// taken; a port free on both a moment ago can still be taken by another process's
    /// ephemeral connection, so a start that fails that way is retried on a fresh port.
    async fn start(dir: &Path) -> Self {
        const ATTEMPTS: usize = 5;
        let log_path = dir.join("chromedriver.log");
        for attempt in 1..=ATTEMPTS {
            let mut driver = Self::spawn(dir, &log_path);
            match driver.wait_ready(&log_path).await {
                Ok(()) => return driver,
                Err(log) if attempt < ATTEMPTS && log.contains("Address already in use") => {
                    eprintln!(
                        "chromedriver could not bind port {}; retrying on another",
                        driver.port
                    );
                    // Dropping this attempt must not remove the directory the next one uses.
                    std::mem::take(&mut driver.dir);
                }
                Err(log) => panic!(
                    "chromedriver exited at start-up; its log ({}):\n{log}",
                    log_path.display()
                ),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    fn spawn(dir: &Path, log_path: &Path) -> Self {
        let binary = chromedriver_binary();
        let port = crate::common::free_port_dual_stack();
        let log = std::fs::File::create(log_path).expect("create chromedriver.log");
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", binary.display()));
        Driver {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until chromedriver answers `/status`; `Err(log)` when it exited at start-up.
    async fn wait_ready(&mut self, log_path: &Path) -> Result<(), String> {
        let client = reqwest::Client::new();
        let status_url = format!("{}/status", self.url());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                return Err(format!("({status})\n{log}"));
            }
            if let Ok(response) = client
                .get(&status_url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if let Ok(body) = response.json::<Value>().await {
                    if body["value"]["ready"] == json!(true) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "chromedriver on port {} was not ready within 20 s; its log:\n{}",
                    self.port,
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Best-effort `DELETE /session/<id>` with plain blocking I/O (usable from Drop): makes
    /// chromedriver quit its Chromium cleanly.
    fn delete_session_blocking(&self, session_id: &str) {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "DELETE /session/{session_id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group holds chromedriver and the Chromium it started (pgid = chromedriver's pid).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Browser
// ---------------------------------------------------------------------------------------------

/// How to open a browser context.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    pub user_agent: Option<String>,
    pub width: u32,
    pub height: u32,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions {
            user_agent: None,
            width: 1280,
            height: 900,
        }
    }
}

impl BrowserOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn user_agent(mut self, user_agent: &str) -> Self {
        self.user_agent = Some(user_agent.to_string());
        self
    }

    pub fn window(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }
}

/// One browser context: a chromedriver, a WebDriver session, a fresh profile.
pub struct Browser {
    pub name: String,
    pub client: Client,
    session_id: String,
    closed: AtomicBool,
    driver: Driver,
}

impl Browser {
    async fn open(name: &str, options: &BrowserOptions) -> Self {
        let chromium = chromium_binary();
        let dir = std::env::temp_dir().join(format!("authgate-browser-{}", random_suffix()));
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).expect("create browser profile dir");
        let driver = Driver::start(&dir).await;

        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            // Without these Chromium phones home at start-up, which this machine refuses.
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-dev-shm-usage".to_string(),
            format!("--window-size={},{}", options.width, options.height),
            format!("--user-data-dir={}", profile.display()),
        ];
        if let Some(user_agent) = &options.user_agent {
            args.push(format!("--user-agent={user_agent}"));
        }
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": args,
            },
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let client = match ClientBuilder::native()
            .capabilities(capabilities)
            .connect(&driver.url())
            .await
        {
            Ok(client) => client,
            Err(e) => panic!(
                "cannot open a Chromium session through chromedriver ({}): {e}\nchromedriver log:\n{}\n\
                 Are chromium and chromium-driver installed and of the same version? ({INSTALL_HINT})",
                chromium.display(),
                std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default()
            ),
        };
        let session_id = client.session_id().await.ok().flatten().unwrap_or_default();
        let browser = Browser {
            name: name.to_string(),
            client,
            session_id,
            closed: AtomicBool::new(false),
            driver,
        };
        browser.resize(options.width, options.height).await;
        browser
    }

    /// Quits Chromium (the WebDriver session); the chromedriver goes on Drop.
    pub async fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ =
                tokio::time::timeout(Duration::from_secs(15), self.client.clone().close()).await;
        }
    }

    // --- navigation -------------------------------------------------------------------------

    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            panic!("[{}] cannot open {url}: {e}", self.name);
        }
    }

    pub async fn current_url(&self) -> reqwest::Url {
        self.client
            .current_url()
            .await
            .unwrap_or_else(|e| panic!("[{}] cannot read the current URL: {e}", self.name))
    }

    /// The path and query the browser is on, e.g. `/auth/login?rd=%2F`.
    pub async fn path_and_query(&self) -> String {
        let url = self.current_url().await;
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// Waits until the browser is on `path` (query ignored) and the page has loaded.
    pub async fn wait_for_path(&self, path: &str) -> reqwest::Url {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.current_url().await;
            if url.path() == path && self.ready_state().await == "complete" {
                return url;
            }
            if Instant::now() >= deadline {
                panic!(
                    "[{}] expected to be on {path}, but the browser is on {url}; the page says:\n{}",
                    self.name,
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ready_state(&self) -> String {
        self.client
            .execute("return document.readyState", vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Marks the current document, runs `action` (a click, Enter, …), then waits until a new
    /// document has replaced it and finished loading. Works even when the next page looks
    /// exactly like this one (a form shown again with the same error).
    pub async fn expect_new_page<F, Fut>(&self, what: &str, action: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let marker = format!("m{}", random_suffix());
        self.client
            .execute(
                "window.__authgateMarker = arguments[0]; return true;",
                vec![json!(marker)],
            )
            .await
            .unwrap_or_else(|e| panic!("[{}] cannot mark the page: {e}", self.name));
        action().await;
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self
                .client
                .execute(
                    "return [window.__authgateMarker || null, document.readyState];",
                    vec![],
                )
                .await;
            if let Ok(Value::Array(values)) = &state {
                if values[0] != json!(marker) && values[1] == json!("complete") {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "[{}] {what}: no new page loaded within {WAIT:?}; still on {} saying:\n{}",
                    self.name,
                    self.current_url().await,
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // --- elements ---------------------------------------------------------------------------

    /// Waits for an element matching `css`.
    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!(
                "[{}] no element `{css}` on {} within {WAIT:?} ({e}); the page says:\n{}",
                self.name,
                self.current_url().await,
                self.body_text().await
            ),
        }
    }

    /// Every element matching `css` right now (no waiting).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("[{}] find_all `{css}`: {e}", self.name))
    }

    /// Waits for a `<button>` whose visible text is exactly `text`.
    pub async fn button(&self, text: &str) -> Element {
        let xpath = format!("//button[normalize-space(.)='{text}']");
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::XPath(&xpath))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!(
                "[{}] no button \"{text}\" on {} ({e}); the page says:\n{}",
                self.name,
                self.current_url().await,
                self.body_text().await
            ),
        }
    }

    /// Waits for a link whose visible text is exactly `text`.
    pub async fn link(&self, text: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::LinkText(text))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!(
                "[{}] no link \"{text}\" on {} ({e}); the page says:\n{}",
                self.name,
                self.current_url().await,
                self.body_text().await
            ),
        }
    }

    /// Types `value` into the (cleared) field matching `css`.
    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("[{}] cannot clear `{css}`: {e}", self.name));
        field
            .send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("[{}] cannot type into `{css}`: {e}", self.name));
    }

    pub async fn click(&self, element: &Element, what: &str) {
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("[{}] cannot click {what}: {e}", self.name));
    }

    /// Clicks the button with this text and waits for the page it leads to.
    pub async fn submit_with(&self, button_text: &str) {
        let button = self.button(button_text).await;
        self.expect_new_page(&format!("clicking \"{button_text}\""), || async {
            self.click(&button, &format!("button \"{button_text}\""))
                .await
        })
        .await;
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        element
            .text()
            .await
            .unwrap_or_else(|e| panic!("[{}] cannot read the text of `{css}`: {e}", self.name))
    }

    pub async fn attr(&self, element: &Element, name: &str) -> Option<String> {
        element
            .attr(name)
            .await
            .unwrap_or_else(|e| panic!("[{}] cannot read attribute {name}: {e}", self.name))
    }

    /// `document.body.innerText` (empty when there is no page).
    pub async fn body_text(&self) -> String {
        self.client
            .execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The page's text parsed as JSON (Chromium shows a JSON response as text in a `<pre>`,
    /// beside an optional pretty-printed view).
    pub async fn body_json(&self) -> Value {
        let text = self
            .js(
                "const pre = document.querySelector('pre'); \
                 return pre ? pre.textContent : (document.body ? document.body.innerText : '');",
                vec![],
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_string();
        match serde_json::from_str(text.trim()) {
            Ok(value) => value,
            Err(e) => panic!(
                "[{}] the page at {} is not JSON ({e}):\n{text}",
                self.name,
                self.current_url().await
            ),
        }
    }

    /// Runs a script (`return …`) and gives back its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("[{}] script failed ({e}):\n{script}", self.name))
    }

    /// Polls a script until it returns something truthy (its value), or fails naming `what`.
    pub async fn wait_until_js(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(value) = self.client.execute(script, vec![]).await {
                let truthy = match &value {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                if truthy {
                    return value;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "[{}] timed out after {WAIT:?} waiting for: {what}; on {} the page says:\n{}",
                    self.name,
                    self.current_url().await,
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `id` of the focused element ("" if none has one).
    pub async fn focused_id(&self) -> String {
        self.js(
            "return document.activeElement ? (document.activeElement.id || '') : '';",
            vec![],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    // --- window and pictures ----------------------------------------------------------------

    /// Makes the viewport (not the window) `width` × `height` CSS pixels.
    pub async fn resize(&self, width: u32, height: u32) {
        for _ in 0..3 {
            let (inner_w, inner_h) = self.viewport().await;
            if inner_w == width && inner_h == height {
                return;
            }
            let (outer_w, outer_h) = self
                .client
                .get_window_size()
                .await
                .unwrap_or_else(|e| panic!("[{}] get_window_size: {e}", self.name));
            let extra_w = (outer_w as i64 - inner_w as i64).max(0) as u32;
            let extra_h = (outer_h as i64 - inner_h as i64).max(0) as u32;
            self.client
                .set_window_size(width + extra_w, height + extra_h)
                .await
                .unwrap_or_else(|e| panic!("[{}] set_window_size: {e}", self.name));
        }
        let (inner_w, inner_h) = self.viewport().await;
        assert!(
            inner_w == width && inner_h == height,
            "[{}] could not make the viewport {width}x{height}; it is {inner_w}x{inner_h}",
            self.name
        );
    }

    /// `window.innerWidth`, `window.innerHeight`.
    pub async fn viewport(&self) -> (u32, u32) {
        let value = self
            .js("return [window.innerWidth, window.innerHeight];", vec![])
            .await;
        (
            value[0].as_u64().unwrap_or(0) as u32,
            value[1].as_u64().unwrap_or(0) as u32,
        )
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("[{}] screenshot failed: {e}", self.name))
    }

    /// Writes a PNG of the viewport to `path` (atomically: temp file, then rename).
    pub async fn save_screenshot(&self, path: &Path) {
        let png = self.screenshot().await;
        write_atomically(path, &png);
    }

    /// Writes a PNG of the whole page, `width` CSS pixels wide, to `path`: the viewport is
    /// stretched to the document's height for the picture, then put back.
    pub async fn save_full_page_screenshot(&self, path: &Path, width: u32) {
        let (old_w, old_h) = self.viewport().await;
        self.resize(width, old_h).await;
        let height = self
            .js(
                "return Math.ceil(Math.max(document.documentElement.scrollHeight, document.body.scrollHeight));",
                vec![],
            )
            .await
            .as_u64()
            .unwrap_or(old_h as u64) as u32;
        self.resize(width, height.max(old_h)).await;
        self.save_screenshot(path).await;
        self.resize(old_w, old_h).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::SeqCst) && !self.session_id.is_empty() {
            self.driver.delete_session_blocking(&self.session_id);
        }
    }
}

pub fn write_atomically(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    let tmp = path.with_extension(format!("tmp-{}", random_suffix()));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("cannot move {} to {}: {e}", tmp.display(), path.display()));
}

// ---------------------------------------------------------------------------------------------
// Test runner with screenshots on failure
// ---------------------------------------------------------------------------------------------

/// The browsers one test opened; kept alive by the runner so a failure can be photographed.
#[derive(Clone)]
pub struct Scene {
    pub test: &'static str,
    browsers: Arc<Mutex<Vec<Arc<Browser>>>>,
}

impl Scene {
    /// Opens a new browser context (its own chromedriver, session and profile).
    pub async fn browser(&self, name: &str, options: BrowserOptions) -> Arc<Browser> {
        let browser = Arc::new(Browser::open(name, &options).await);
        self.browsers.lock().unwrap().push(browser.clone());
        browser
    }

    fn all(&self) -> Vec<Arc<Browser>> {
        self.browsers.lock().unwrap().clone()
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else {
        "(non-text panic)".to_string()
    }
}

/// Runs `body` with a fresh [`Scene`]. On a panic, screenshots every open browser into
/// `target/browser-failures/` and panics again with the original message and the file paths.
/// Browsers are closed either way.
pub async fn browser_test<F, Fut>(test: &'static str, body: F)
where
    F: FnOnce(Scene) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Fail loudly before anything else when the browser is missing.
    chromium_binary();
    chromedriver_binary();
    let scene = Scene {
        test,
        browsers: Arc::new(Mutex::new(Vec::new())),
    };
    let outcome = tokio::spawn(body(scene.clone())).await;
    let browsers = scene.all();
    let failure = match outcome {
        Ok(()) => None,
        Err(error) if error.is_panic() => Some(panic_message(&*error.into_panic())),
        Err(error) => Some(format!("test task did not finish: {error}")),
    };
    if let Some(message) = failure {
        let mut shots = Vec::new();
        for (index, browser) in browsers.iter().enumerate() {
            let file = if index == 0 {
                format!("{test}.png")
            } else {
                format!("{test}-{}.png", browser.name)
            };
            let path = failure_dir().join(file);
            let shot =
                tokio::time::timeout(Duration::from_secs(15), browser.client.screenshot()).await;
            match shot {
                Ok(Ok(png)) => {
                    write_atomically(&path, &png);
                    let url = browser
                        .client
                        .current_url()
                        .await
                        .map(|u| u.to_string())
                        .unwrap_or_default();
                    shots.push(format!(
                        "  [{}] {} (was on {url})",
                        browser.name,
                        path.display()
                    ));
                }
                Ok(Err(e)) => shots.push(format!("  [{}] no screenshot: {e}", browser.name)),
                Err(_) => shots.push(format!("  [{}] no screenshot: timed out", browser.name)),
            }
        }
        for browser in &browsers {
            browser.close().await;
        }
        drop(browsers);
        let shots = if shots.is_empty() {
            "  (no browser was open)".to_string()
        } else {
            shots.join("\n")
        };
        panic!("{message}\nscreenshots of the failure:\n{shots}");
    }
    for browser in &browsers {
        browser.close().await;
    }
}
