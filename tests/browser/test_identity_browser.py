"""Identity in a real browser: the signed cookie keeps a student's name across a reload, another browser
opening the same address is someone else, and the teacher's sign-in survives a reload until Sign out."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

T = 60_000


@pytest.fixture
def new_browser(browser: Browser, browser_context_args, streamlit_server):
    """Open pages in browsers of their own (no shared cookies); all closed at the end."""
    contexts = []

    def open_page(path: str = "/") -> Page:  # a path on the server, or a whole URL
        context = browser.new_context(**browser_context_args)
        context.set_default_timeout(T)
        contexts.append(context)
        page = context.new_page()
        page.goto(path if path.startswith("http") else streamlit_server + path)
        return page

    yield open_page
    for context in contexts:
        context.close()


def name_box(page: Page):
    return page.get_by_test_id("stSidebar").get_by_role("textbox", name="Your name")


def wait_for_cookie(page: Page, name: str) -> None:
    page.wait_for_function(f"() => document.cookie.split('; ').some(c => c.startsWith('{name}='))", timeout=T)


def test_a_name_survives_a_reload_and_another_browser_on_the_same_address_is_someone_else(new_browser):
    page = new_browser("/?u=0123456789ab")  # an old-style link: its id is ignored and dropped
    expect(name_box(page)).to_be_visible(timeout=T)
    wait_for_cookie(page, "mtl_id")
    name_box(page).fill("Browser Ada")
    name_box(page).press("Enter")
    expect(page.get_by_test_id("stSidebar").get_by_text("Move my runs to another computer")).to_be_visible()
    page.wait_for_timeout(1_000)  # the name reaches the server with the Enter's rerun
    assert "u=" not in page.url
    page.reload()
    expect(name_box(page)).to_have_value("Browser Ada", timeout=T)

    other = new_browser(page.url)  # the address Ada's browser shows, opened by another browser
    expect(name_box(other)).to_be_visible(timeout=T)
    expect(name_box(other)).to_have_value("")
    other.reload()  # now with its own cookie: still someone else
    expect(name_box(other)).to_have_value("", timeout=T)
    name_box(other).fill("browser ada")  # the same name, another case
    name_box(other).press("Enter")
    expect(other.get_by_text("already has that name")).to_be_visible(timeout=T)


def test_the_teacher_stays_signed_in_across_a_reload_until_signing_out(new_browser):
    from conftest import TEACHER_TOKEN

    page = new_browser(f"/?teacher={TEACHER_TOKEN}")
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("All students' runs")).to_be_visible(timeout=T)
    assert "teacher=" not in page.url
    wait_for_cookie(page, "mtl_teacher")
    page.reload()
    expect(sidebar.get_by_text("All students' runs")).to_be_visible(timeout=T)
    sidebar.get_by_role("button", name="Sign out").click()
    expect(sidebar.get_by_text("Teacher sign-in")).to_be_visible(timeout=T)
    page.wait_for_function("() => !document.cookie.includes('mtl_teacher=')", timeout=T)
    page.reload()
    expect(sidebar.get_by_text("Teacher sign-in")).to_be_visible(timeout=T)
    expect(sidebar.get_by_text("All students' runs")).to_have_count(0)
