"""The ``khazna`` command: server side (serve, users, verify) and client side (push, pull...)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from khazna import __version__
from khazna.access.policy import check_role
from khazna.catalog.names import pick_language
from khazna.client import Client, KhaznaClientError
from khazna.config import Settings
from khazna.errors import KhaznaError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Khazna, a sovereign data hub. Server commands act on $KHAZNA_HOME; "
    "client commands talk to $KHAZNA_URL with $KHAZNA_TOKEN.",
)
users_app = typer.Typer(no_args_is_help=True, help="Manage the hub's users (server side).")
app.add_typer(users_app, name="users")
tokens_app = typer.Typer(
    no_args_is_help=True, help="Manage your API tokens on the hub (client side)."
)
app.add_typer(tokens_app, name="tokens")
access_app = typer.Typer(
    no_args_is_help=True,
    help="Access requests for restricted datasets: ask (client side); approve or refuse "
    "(client side as a publisher, or on the hub folder as its operator with --home).",
)
app.add_typer(access_app, name="access")
audit_app = typer.Typer(
    no_args_is_help=True,
    help="The audit log: export it (server side), check an export offline, print the hub key.",
)
app.add_typer(audit_app, name="audit")
encryption_app = typer.Typer(
    no_args_is_help=True,
    help="Encryption at rest: make the key the hub seals its files with (server side).",
)
app.add_typer(encryption_app, name="encryption")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

HomeOpt = Annotated[
    Path | None, typer.Option("--home", envvar="KHAZNA_HOME", help="The hub folder.")
]


def _hub(home: Path | None):  # type: ignore[no-untyped-def]
    from khazna.hub import Hub

    return Hub(Settings.from_env(home))


@contextmanager
def _errors() -> Iterator[None]:
    """Report hub and client errors as one line on stderr, exit status 1."""
    try:
        yield
    except (KhaznaClientError, KhaznaError, ValueError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        err.print(f"[red]error:[/red] {message}", highlight=False)
        raise typer.Exit(1) from exc


@app.command()
def version() -> None:
    """Print Khazna's version."""
    out.print(__version__)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    demo: Annotated[bool, typer.Option("--demo", help="Load the bundled sample datasets.")] = False,
    home: HomeOpt = None,
) -> None:
    """Run the hub."""
    import uvicorn

    from khazna.app import create_app

    with _errors():
        hub = _hub(home)
        if demo:
            from khazna.demo import load_demo

            changed = load_demo(hub)
            err.print(f"demo data: {len(changed)} dataset(s) loaded or updated")
        err.print(
            f"Khazna {__version__}: hub folder {hub.settings.home}, http://{host}:{port}/",
            highlight=False,
        )
    uvicorn.run(
        create_app(hub),
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=5,
        # The client's address behind a load balancer, for the audit log and the quotas.
        proxy_headers=True,
        forwarded_allow_ips=hub.settings.trusted_proxies,
    )


@users_app.command("add")
def users_add(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="Make a hub administrator.")] = False,
    org: Annotated[str | None, typer.Option(help="Also make the user a member of ORG.")] = None,
    role: Annotated[str, typer.Option(help="Role in --org: admin, editor or member.")] = "editor",
    home: HomeOpt = None,
) -> None:
    """Create a user; prints its new API token as the last line."""
    with _errors():
        hub = _hub(home)
        if org:
            # Check before creating the user: a failure afterwards would lose the token.
            hub.catalog.organization(org)
            check_role(role)
        from khazna.access.audit import AuditNote

        operator = hub.accounts.operator_principal()
        # Each change is written with its audit entry, in one transaction.
        created = AuditNote(operator, "user.create", {"user": name, "admin": admin}, "cli")
        _, token = hub.accounts.add_user(name, admin=admin, note=created)
        if org:
            member = AuditNote(operator, "membership.change", {"user": name, "role": role}, "cli")
            hub.catalog.add_member(operator, org, name, role, note=member)
        err.print(f"user {name} created{' (admin)' if admin else ''}; its token is shown once:")
        print(token)


@app.command()
def verify(home: HomeOpt = None) -> None:
    """Re-hash every stored blob and walk the audit chain; non-zero exit on any damage."""
    with _errors():
        report = _hub(home).verify()
    for problem in report.problems:
        out.print(f"[red]DAMAGED[/red] {problem}", highlight=False)
    out.print(
        f"{report.audit_entries_checked} audit entries and "
        f"{report.checkpoints_checked} signed checkpoint(s) checked",
        highlight=False,
    )
    out.print(f"{report.blobs_checked} blob(s) checked, {len(report.problems)} problem(s)")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    output: Annotated[Path, typer.Option("-o", "--output", help="The file to write.")],
    dataset: Annotated[
        str | None,
        typer.Option(metavar="ORG/NAME", help="Only this dataset's entries in full."),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Write the audit log and a signed checkpoint of its head to a file (JSON Lines)."""
    with _errors():
        hub = _hub(home)
        operator = hub.accounts.operator_principal()
        detail = {"file": output.name, "dataset": dataset}
        hub.audit.record(operator, "audit.export", detail=detail, client="cli")
        with open(output, "w", encoding="utf-8") as f:
            summary = hub.audit.export(f, dataset=dataset)
    cp = summary.checkpoint
    redacted = f", {summary.redacted} of other datasets as hashes only" if dataset else ""
    err.print(
        f"{output}: {summary.entries} entries{redacted}; checkpoint at {cp.seq} signed by "
        f"key {cp.key_id}",
        highlight=False,
    )


@audit_app.command("check")
def audit_check(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    public_key: Annotated[
        str,
        typer.Option(
            "--public-key",
            metavar="KEYFILE_OR_TEXT",
            help="The hub's public key, as `khazna audit public-key` prints it, or a file.",
        ),
    ],
) -> None:
    """Check an export offline: every hash, every link and the signature."""
    from khazna.access.audit import check_export, parse_public_key

    with _errors():
        text = public_key
        if not text.strip().startswith(("ed25519:", "-----BEGIN")) and Path(text).is_file():
            text = Path(text).read_text(encoding="utf-8")
        key = parse_public_key(text)
        with open(file, encoding="utf-8") as f:
            result = check_export(f, key)
    for problem in result.problems:
        out.print(f"[red]BAD[/red] {problem}", highlight=False)
    if not result.ok:
        first = result.problems[0].seq if result.problems else 0
        out.print(f"{file}: damaged, first bad position {first}", highlight=False)
        raise typer.Exit(1)
    assert result.checkpoint is not None
    shown = f" for {result.dataset}" if result.dataset else ""
    out.print(
        f"{file}: OK, {result.entries} entries{shown} and {result.redacted} as hashes only, "
        f"chain 1-{result.checkpoint.seq} signed at {result.checkpoint.at}",
        highlight=False,
    )


@audit_app.command("public-key")
def audit_public_key(home: HomeOpt = None) -> None:
    """Print the hub's public key (made on first use), to check exports with."""
    from khazna.access.audit import public_key_text

    with _errors():
        hub = _hub(home)
        print(public_key_text(hub.audit.key.public()))


@encryption_app.command("new-key")
def encryption_new_key(
    path: Annotated[Path, typer.Argument(metavar="PATH", dir_okay=False)],
) -> None:
    """Write a new random 256-bit key to PATH (a new file, mode 0600); prints its fingerprint."""
    from khazna.storage.encryption import EncryptionKey

    with _errors():
        try:
            key = EncryptionKey.new_file(path)
        except FileExistsError:
            raise ValueError(f"{path} exists: a key file is never overwritten") from None
    err.print(
        f"{path}: new encryption key written (mode 0600). Keep it outside the hub folder and "
        "back it up: without it the hub's files cannot be read. Its fingerprint:",
        highlight=False,
    )
    print(key.fingerprint)


# client side ---------------------------------------------------------------------------


def _client() -> Client:
    return Client(os.environ.get("KHAZNA_URL"), os.environ.get("KHAZNA_TOKEN"))


@contextmanager
def _transfer_bar() -> Iterator[Progress]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        yield bar


def _progress_callback(bar: Progress):  # type: ignore[no-untyped-def]
    tasks: dict[str, TaskID] = {}

    def update(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done, total=total)

    return update


@app.command()
def push(
    ref: Annotated[str, typer.Argument(metavar="ORG/DATASET")],
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True)],
    title: Annotated[str | None, typer.Option(help="Title, if the dataset is created.")] = None,
    access: Annotated[
        str,
        typer.Option(help="public, registered, restricted or private, if the dataset is created."),
    ] = "public",
    message: Annotated[str, typer.Option("-m", "--message", help="What changed.")] = "",
) -> None:
    """Upload files as one new version (creating the dataset if needed); resumable."""
    with _errors(), _client() as client, _transfer_bar() as bar:
        result = client.push(
            ref,
            files,
            message=message,
            progress=_progress_callback(bar),
            title=title,
            access=access,
        )
    out.print(f"{ref}: version {result['version']}")
    for f in result["files"]:
        out.print(f"  {f['sha256']}  {f['size']:>12}  {f['name']}", highlight=False)


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(metavar="ORG/DATASET")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write to.")] = Path("."),
    version: Annotated[int | None, typer.Option(help="Version (default: latest).")] = None,
) -> None:
    """Download a dataset's files, verifying each SHA-256."""
    with _errors(), _client() as client, _transfer_bar() as bar:
        paths = client.pull(ref, output, version=version, progress=_progress_callback(bar))
    for p in paths:
        out.print(f"{p}", highlight=False)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="Read-only SQL; tables by their sql_name.")],
    format: Annotated[str, typer.Option("--format", help="table, csv, json or parquet.")] = "table",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to FILE.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows (table, json).")] = None,
) -> None:
    """Run read-only SQL on the hub."""
    if format not in ("table", "csv", "json", "parquet"):
        err.print("[red]error:[/red] --format must be table, csv, json or parquet")
        raise typer.Exit(2)
    if format == "parquet" and output is None:
        err.print("[red]error:[/red] parquet is binary: give -o FILE")
        raise typer.Exit(2)
    with _errors(), _client() as client:
        if format in ("csv", "parquet"):
            client.query_to(sql, output if output is not None else sys.stdout.buffer, format)
            return
        result = client.query(sql, limit=limit)
    if format == "json":
        text = json.dumps(result, ensure_ascii=False, indent=2)
        if output is not None:
            output.write_text(text + "\n", encoding="utf-8")
        else:
            print(text)
        return
    table = Table(*(c["name"] for c in result["columns"]))
    for row in result["rows"]:
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)
    more = " (truncated)" if result.get("truncated") else ""
    err.print(f"{len(result['rows'])} row(s){more} in {result['elapsed_ms']:.0f} ms")


@app.command()
def search(
    text: Annotated[str, typer.Argument()] = "",
    org: Annotated[str | None, typer.Option()] = None,
    tag: Annotated[str | None, typer.Option()] = None,
    format: Annotated[str | None, typer.Option("--format")] = None,
    license: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 20,
    lang: Annotated[str, typer.Option(help="Language of titles: fr, ar, en.")] = "fr",
) -> None:
    """Search the catalog."""
    with _errors(), _client() as client:
        found = client.search(text, org=org, tag=tag, format=format, license=license, limit=limit)
    table = Table("dataset", "title", "access", "tags", title=f"{found['count']} result(s)")
    for r in found["results"]:
        table.add_row(
            f"{r['org']}/{r['name']}",
            pick_language(r["title"], lang),
            r["access"],
            ", ".join(r["tags"]),
        )
    out.print(table)


# tokens ------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    label: Annotated[str, typer.Option(help="What the token is for.")] = "",
    scope: Annotated[str, typer.Option(help="read or read-write.")] = "read-write",
    expires: Annotated[
        str | None, typer.Option(help="Expiry: a date (through its end, UTC) or date and time.")
    ] = None,
    ttl: Annotated[int | None, typer.Option(help="Expiry in seconds from now.")] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option("--dataset", help="Restrict to ORG/DATASET (repeatable)."),
    ] = None,
    org: Annotated[
        list[str] | None, typer.Option("--org", help="Restrict to ORG's datasets (repeatable).")
    ] = None,
) -> None:
    """Create an API token for yourself; prints it as the last line, once."""
    with _errors(), _client() as client:
        made = client.create_token(
            label=label,
            scope=scope,
            expires_at=expires,
            ttl=ttl,
            datasets=dataset or None,
            organizations=org or None,
        )
    reach = _reach(made)
    err.print(
        f"token {made['id']} ({made['scope']}, {reach}, expires {made['expires_at'] or 'never'}); "
        "shown once:",
        highlight=False,
    )
    print(made["token"])


def _reach(token: dict[str, Any]) -> str:
    if token["datasets"] is None:
        return "all your datasets"
    names = [*token["datasets"], *(f"{o}/*" for o in token["organizations"])]
    return "only " + ", ".join(names)


@tokens_app.command("list")
def tokens_list() -> None:
    """List your tokens (never their secret)."""
    with _errors(), _client() as client:
        found = client.tokens()
    # One line per token, tab-separated, so scripts can cut it.
    print("\t".join(("id", "scope", "state", "created", "expires", "last used", "reach", "label")))
    for t in found:
        cells = (
            str(t["id"]),
            t["scope"],
            t["state"],
            t["created_at"] or "",
            t["expires_at"] or "never",
            t["last_used_at"] or "never",
            _reach(t),
            t["label"],
        )
        print("\t".join(cells))


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Revoke one of your tokens; it stops working at once."""
    with _errors(), _client() as client:
        client.revoke_token(token_id)
    out.print(f"token {token_id} revoked")


# access requests ---------------------------------------------------------------------

OperatorHome = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="KHAZNA_HOME",
        help="Act as the hub's operator on this hub folder instead of through $KHAZNA_URL.",
    ),
]


def _describe(request: dict[str, object]) -> str:
    text = f"{request['org']}/{request['dataset']} for {request['user']}: {request['state']}"
    if request.get("expires_at"):
        text += f" until {request['expires_at']}"
    if request.get("reason"):
        text += f" ({request['reason']})"
    return text


@access_app.command("request")
def access_request(
    ref: Annotated[str, typer.Argument(metavar="ORG/DATASET")],
    purpose: Annotated[str, typer.Option(help="Why you need the data.")],
) -> None:
    """Ask the publisher of a restricted dataset for access."""
    with _errors(), _client() as client:
        made = client.request_access(ref, purpose)
    out.print(f"access request {made['id']}: {_describe(made)}", highlight=False)


@access_app.command("list")
def access_list(
    ref: Annotated[str | None, typer.Argument(metavar="[ORG/DATASET]")] = None,
    state: Annotated[
        str | None, typer.Option(help="pending, approved, refused or expired.")
    ] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Your own requests.")] = False,
) -> None:
    """List access requests: for a dataset, your inbox as a publisher, or --mine."""
    with _errors(), _client() as client:
        found = client.my_access_requests(state) if mine else client.access_requests(ref, state)
    for r in found:
        out.print(f"{r['id']}  {_describe(r)}  — {r['purpose']}", highlight=False)
    err.print(f"{len(found)} request(s)")


@access_app.command("approve")
def access_approve(
    ref: Annotated[str, typer.Argument(metavar="ORG/DATASET")],
    user: Annotated[str, typer.Argument(metavar="USER")],
    until: Annotated[
        str | None, typer.Option(help="Expiry: a date (through its end, UTC) or date and time.")
    ] = None,
    home: OperatorHome = None,
) -> None:
    """Approve USER's latest request for a restricted dataset."""
    with _errors():
        if home is not None:
            from khazna.access.accounts import parse_expiry
            from khazna.access.audit import AuditNote
            from khazna.client import split_ref

            hub = _hub(home)
            org, name = split_ref(ref)
            expiry = None if until is None else parse_expiry(until, "--until")
            operator = hub.accounts.operator_principal()
            # The same entry as an approval through the API, by the operator, from "cli".
            detail = {"user": user, "until": None if expiry is None else expiry.isoformat()}
            entry = AuditNote(operator, "access.approve", detail, "cli")
            done = hub.access_requests.approve(operator, org, name, user, expiry, note=entry)
        else:
            with _client() as client:
                done = client.approve_access(ref, user, until)
    out.print(_describe(done), highlight=False)


@access_app.command("refuse")
def access_refuse(
    ref: Annotated[str, typer.Argument(metavar="ORG/DATASET")],
    user: Annotated[str, typer.Argument(metavar="USER")],
    reason: Annotated[str, typer.Option(help="Why, for the requester.")],
    home: OperatorHome = None,
) -> None:
    """Refuse USER's latest request (an approval is withdrawn at once)."""
    with _errors():
        if home is not None:
            from khazna.access.audit import AuditNote
            from khazna.client import split_ref

            hub = _hub(home)
            org, name = split_ref(ref)
            operator = hub.accounts.operator_principal()
            entry = AuditNote(operator, "access.refuse", {"user": user, "reason": reason}, "cli")
            done = hub.access_requests.refuse(operator, org, name, user, reason, note=entry)
        else:
            with _client() as client:
                done = client.refuse_access(ref, user, reason)
    out.print(_describe(done), highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
