"""The pages live in a top-level `pages/` folder, which Streamlit's legacy discovery would serve as bare
scripts. Streamlit ignores that folder only once some session has run app.py's `st.navigation`, so the
very first request a fresh server gets, a deep link, must still reach the router."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, expect

T = 60_000


def test_a_deep_link_as_the_very_first_request_gets_the_router(browser: Browser, browser_context_args, fresh_server):
    context = browser.new_context(**browser_context_args)
    try:
        page = context.new_page()
        page.goto(fresh_server + "/train?model=hard&epochs=3&hide=lr,batch")
        expect(page.get_by_role("heading", name="🏋️ Train")).to_be_visible(timeout=T)
        # the router's sidebar (app.py): its five pages and the server's job counter
        expect(page.get_by_test_id("stSidebarNav").get_by_role("link")).to_have_count(5, timeout=T)
        expect(page.get_by_text(re.compile(r"Jobs on this server"))).to_be_visible(timeout=T)
        # the link's settings reached the router's form (a bare page script would not know them)
        expect(page.get_by_text(re.compile(r"This link fixes some settings"))).to_be_visible(timeout=T)
        expect(page.get_by_role("radio", name="Hard sharing")).to_be_checked()
        expect(page.get_by_role("spinbutton", name="Epochs")).to_have_value("3")
        expect(page).to_have_url(re.compile(r"/train"))
    finally:
        context.close()
