//! The WebDriver client drives a real headless Chromium: it opens a page the controller serves,
//! finds, reads and waits for elements, runs a script and takes a screenshot.

use tc_testkit::TestController;
use tc_testkit::browser::Browser;

#[tokio::test]
async fn the_browser_opens_reads_and_photographs_a_page_of_the_controller() {
    let controller = TestController::start().await;
    let browser = Browser::start().await.expect("headless Chromium");
    browser
        .goto(&format!("{}/openapi.json", controller.url()))
        .await
        .unwrap();
    let body = browser.wait_for("body").await.unwrap();
    let text = browser.text(&body).await.unwrap();
    assert!(text.contains("\"openapi\""), "{text}");
    assert!(browser.url().await.unwrap().ends_with("/openapi.json"));
    let text = browser
        .wait_for_text("body", "/apis/thinfleet.io/v1/apply")
        .await
        .unwrap();
    assert!(!text.is_empty());
    assert!(browser.find_all("#no-such-thing").await.unwrap().is_empty());
    let sum = browser.execute("return 20 + 22;").await.unwrap();
    assert_eq!(sum, 42);
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("page.png");
    browser.screenshot(&png).await.unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}
