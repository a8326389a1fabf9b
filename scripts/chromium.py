"""Headless Chromium for the browser checks (check-sign-in.sh, check-deploy.sh),
driven by selenium from the checks' virtualenv: Debian's chromium and
chromedriver, a profile of its own per browser (so its own cookies), and no
name resolved but 127.0.0.1, so nothing leaves the machine.

    sys.path.insert(0, REPO + "/scripts"); from chromium import chromium, waiting
"""

import sys

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1100,900",
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")


def chromium(lang=None, insecure=False):
    """A new headless Chromium asking for `lang` (e.g. "uk", "en-US"; its
    default otherwise); `insecure`: accept a self-signed certificate (the
    deployment check's gateway)."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS:
        options.add_argument(flag)
    if lang:
        options.add_argument(f"--lang={lang}")
        options.add_experimental_option("prefs", {"intl.accept_languages": f"{lang},en"})
    if insecure:
        options.add_argument("--ignore-certificate-errors")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def waiting(browser, seconds=30):
    """Waits that outlive a page replaced under them (a redirect, the onward
    page's refresh) between finding an element and reading it."""
    return WebDriverWait(browser, seconds, ignored_exceptions=(NoSuchElementException,
                                                               StaleElementReferenceException))


def confirm_and_log_in(browser, wait, origin, who):
    """On the service's confirmation at `origin`: Continue, then back on
    Synapse's login page at `origin` with a login token, which it logs in
    with. `who` names the check in what it says when something is elsewhere."""
    wait.until(ready.element_to_be_clickable((By.ID, "continue")))
    if not browser.current_url.startswith(origin + "/v1/sso/continue?"):
        sys.exit(f"{who}: FAIL the confirmation is at {browser.current_url}")
    browser.find_element(By.ID, "continue").click()
    wait.until(lambda b: "loginToken=" in b.current_url)
    if not browser.current_url.startswith(origin + "/_matrix/static/client/login/"):
        sys.exit(f"{who}: FAIL came back to {browser.current_url}")
    wait.until(lambda b: b.find_element(By.ID, "title").text == "Logging in...")
