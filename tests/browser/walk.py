#!/usr/bin/env python3
"""Walks authgate's pages in headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium; nothing is downloaded): password login, the TOTP step, a step-up to a route that
wants a fresh login, logout; once with JavaScript and once without. Screenshots go to the
directory given. Started by tests/browser.rs, which runs the gateway and checks the exit code.

usage: walk.py BASE_URL TOTP_SECRET_BASE32 PASSWORD SCREENSHOT_DIR RECOVERY_CODE RECOVERY_CODE

The step-ups use the recovery codes (a TOTP step is accepted once: two fresh codes would take a
minute of waiting).
"""
import base64
import hashlib
import hmac
import os
import struct
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BASE, SECRET, PASSWORD, SHOTS = sys.argv[1:5]
RECOVERY = sys.argv[5:7]
KEY = base64.b32decode(SECRET + "=" * (-len(SECRET) % 8))
used_steps = set()


def totp(step):
    """RFC 6238 with the gateway's parameters (HMAC-SHA-1, 6 digits, 30 s)."""
    mac = hmac.new(KEY, struct.pack(">Q", step), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def fresh_code():
    """A code for a step not used yet (the gateway accepts each step once): waits for the next
    step when the current one was spent."""
    while True:
        step = int(time.time()) // 30
        if step not in used_steps:
            used_steps.add(step)
            return totp(step)
        time.sleep(0.5)


def driver(js):
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--no-first-run", "--window-size=1000,900",
              f"--user-data-dir={tempfile.mkdtemp(prefix='authgate-chromium-')}"]:
        o.add_argument(a)
    if not js:
        o.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def shot(d, name):
    d.save_screenshot(os.path.join(SHOTS, name + ".png"))


def wait_for(d, cond, what):
    try:
        WebDriverWait(d, 15).until(lambda _: cond())
    except Exception:
        raise AssertionError(f"{what}; at {d.current_url}:\n{d.page_source[:2000]}")


def login_with_code(d, label, recovery=None):
    wait_for(d, lambda: "/.auth/login" in d.current_url, "not sent to the login page")
    shot(d, f"{label}-1-login")
    d.find_element(By.ID, "username").send_keys("alice")
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(d, lambda: d.find_elements(By.ID, "code"), "no code step after the password")
    code = d.find_element(By.ID, "code")
    assert code.get_attribute("autocomplete") == "one-time-code"
    assert code.get_attribute("inputmode") == "numeric"
    if recovery:
        # <details> opens without JavaScript.
        d.find_element(By.TAG_NAME, "summary").click()
        d.find_element(By.ID, "recovery_code").send_keys(recovery)
    else:
        code.send_keys(fresh_code())
    shot(d, f"{label}-2-code")
    d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def walk(js, recovery):
    label = "js" if js else "nojs"
    d = driver(js)
    try:
        # 1. A protected page sends the browser to the login, then back.
        d.get(BASE + "/app/page?x=1")
        login_with_code(d, label)
        wait_for(d, lambda: d.current_url.startswith(BASE + "/app/page"), "not back at the page")
        body = d.find_element(By.TAG_NAME, "body").text
        assert "alice" in body, body
        shot(d, f"{label}-3-app")
        # 2. A route that wants a login at most 3 s old: step up with a fresh login.
        time.sleep(4)
        d.get(BASE + "/fresh/report")
        wait_for(d, lambda: "step_up=fresh" in d.current_url, "no step-up for an old login")
        login_with_code(d, f"{label}-stepup", recovery)
        wait_for(d, lambda: d.current_url.startswith(BASE + "/fresh/report"), "not back after the step-up")
        assert "alice" in d.find_element(By.TAG_NAME, "body").text
        shot(d, f"{label}-4-stepped-up")
        # 3. Logout through the gateway's page.
        d.get(BASE + "/.auth/logout")
        shot(d, f"{label}-5-logout")
        d.find_element(By.CSS_SELECTOR, "form[action='/.auth/logout'] button").click()
        wait_for(d, lambda: "/.auth/login" in d.current_url, "logout did not land on the login page")
        d.get(BASE + "/app/page")
        wait_for(d, lambda: "/.auth/login" in d.current_url, "still logged in after logout")
        shot(d, f"{label}-6-logged-out")
    finally:
        d.quit()


if __name__ == "__main__":
    os.makedirs(SHOTS, exist_ok=True)
    walk(js=True, recovery=RECOVERY[0])
    walk(js=False, recovery=RECOVERY[1])
    print("browser walk ok")
