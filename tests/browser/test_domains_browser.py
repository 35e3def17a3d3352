from playwright.sync_api import expect

from domains.models import Domain
from domains.services import domain_create


def test_it_logs_in_creates_a_domain_with_the_form_and_lists_it(logged_in_page, live_server, workspace):
    page = logged_in_page
    page.click("text=New domain")
    page.fill("#id_name", "houses")
    page.select_option("#id_task_type", "binary")
    page.fill("#id_workspace", str(workspace))
    page.fill("#id_data_path", "train.csv")
    page.fill("#id_target_column", "sold")
    page.click("button:has-text('Create domain')")

    expect(page.locator("h1")).to_have_count(1)  # the rendered files' headings are demoted
    expect(page.locator("h1")).to_contain_text("houses")
    expect(page.locator("#file-setup li", has_text="target: sold")).to_have_count(1)
    page.click("nav >> text=Domains")
    expect(page.locator("#domain-list")).to_contain_text("houses")
    expect(page.locator("#domain-list")).to_contain_text("roc_auc")
    assert Domain.objects.get().task.task_type == "binary"


def test_it_shows_form_errors_in_the_page(logged_in_page, live_server, tmp_path):
    page = logged_in_page
    page.goto(f"{live_server.url}/domains/new/")
    page.fill("#id_name", "houses")
    page.fill("#id_workspace", str(tmp_path / "missing"))
    page.click("button:has-text('Create domain')")

    expect(page.locator(".field.has-error")).to_contain_text("workspace does not exist")
    assert not Domain.objects.exists()


def test_it_edits_program_md_in_place_with_htmx(logged_in_page, live_server, workspace):
    domain = domain_create(name="houses", task_type="regression", workspace=workspace)
    page = logged_in_page
    page.goto(f"{live_server.url}{domain.get_absolute_url()}")

    page.click("#file-program >> text=Edit")
    page.fill("#file-program textarea", "# Program\nBeat rmse 50.")
    page.click("#file-program >> text=Save PROGRAM.md")

    expect(page.locator("#file-program")).to_contain_text("Beat rmse 50.")
    assert page.url.endswith(domain.get_absolute_url())  # swapped in place, no navigation
    assert (workspace / "PROGRAM.md").read_text() == "# Program\nBeat rmse 50.\n"
