"""``hotline line``: propose, sign, show and verify a line's charter."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from hotline.charter import (
    DEFAULT_POLICY,
    SIGNATURE_INVALID,
    SIGNATURE_MISSING,
    SIGNATURE_VALID,
    CharterCheck,
    Policy,
    SignedCharter,
    load_charter,
    write_charter,
)
from hotline.charter.model import DEFAULT_CHECK_THRESHOLDS, CheckThresholds
from hotline.cli.common import EXIT_CHECK_FAILED, JsonOption, console, err_console, print_json
from hotline.encoding import INT_MAX
from hotline.errors import HotlineError, UsageError
from hotline.keys import PASSPHRASE_ENV, read_passphrase
from hotline.provision import merge_charters, propose_line, sign_charter, write_draft

app = typer.Typer(
    help=(
        "A line's charter: the sites, their terminals, the exchanges and the policy, signed by "
        "every site. Commission a line with: propose (one side drafts), sign (each side, in "
        "turn), verify and show (everyone, comparing the digest by voice)."
    ),
    no_args_is_help=True,
)

CharterPath = Annotated[Path, typer.Argument(help="The charter file (JSON).")]


class CipherSuite(StrEnum):
    """``--cipher-suite``: the SFrame suites a charter may name (``KNOWN_CIPHER_SUITES``)."""

    AES_128_GCM_SHA256_128 = "AES_128_GCM_SHA256_128"
    AES_256_GCM_SHA512_128 = "AES_256_GCM_SHA512_128"


class Kem(StrEnum):
    """``--kem``: the HPKE KEMs for sender keys (``KNOWN_KEMS``)."""

    MLKEM768_X25519 = "MLKEM768_X25519"
    X25519 = "X25519"


DEFAULT_SUITE = CipherSuite(DEFAULT_POLICY.cipher_suite)
DEFAULT_KEM = Kem(DEFAULT_POLICY.kem)


@app.command("propose")
def propose(  # noqa: PLR0917 (typer maps options to parameters)
    line: Annotated[str, typer.Argument(help="The line id, e.g. 'sochi-washington'.")],
    site: Annotated[
        list[Path],
        typer.Option(
            "--site",
            help=(
                "A site of the line: its folder, a copy of it, or its site.json. Repeat for "
                "every site."
            ),
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the unsigned charter.")],
    terminal: Annotated[
        list[Path] | None,
        typer.Option(
            "--terminal",
            help=(
                "An enrolment record (enrolment.json, or a terminal folder) to include. "
                "Repeatable. Without any, every enrolment kept in the site folders is included."
            ),
        ),
    ] = None,
    exchange: Annotated[
        list[str] | None,
        typer.Option(
            "--exchange",
            help="Exchange URL, optionally pinned: wss://host:port#sha256:<64 hex>. Repeatable.",
        ),
    ] = None,
    turn: Annotated[
        list[str] | None,
        typer.Option(
            "--turn",
            help="TURN relay URL (turn: or turns:), no credentials. Repeatable.",
        ),
    ] = None,
    sfu: Annotated[
        list[str] | None,
        typer.Option(
            "--sfu",
            help=(
                "SFU (Janus HTTP API) for conferences above the mesh limit: "
                "https://host:port/janus#sha256:<64 hex>, or http:// on loopback. Repeatable."
            ),
        ),
    ] = None,
    cipher_suite: Annotated[
        CipherSuite, typer.Option("--cipher-suite", help="SFrame cipher suite (RFC 9605).")
    ] = DEFAULT_SUITE,
    kem: Annotated[
        Kem, typer.Option("--kem", help="KEM for the sender keys (HPKE, RFC 9180).")
    ] = DEFAULT_KEM,
    rekey_interval: Annotated[
        int, typer.Option("--rekey-interval", help="Seconds between rekeys in a call.")
    ] = DEFAULT_POLICY.rekey_interval_s,
    max_participants: Annotated[
        int, typer.Option("--max-participants", help="Most terminals in one call.")
    ] = DEFAULT_POLICY.max_participants,
    readiness_interval: Annotated[
        int, typer.Option("--readiness-interval", help="Seconds between readiness checks.")
    ] = DEFAULT_POLICY.readiness_interval_s,
    recording: Annotated[
        bool,
        typer.Option("--recording/--no-recording", help="Whether calls may be recorded."),
    ] = DEFAULT_POLICY.recording_allowed,
    relay_only: Annotated[
        bool,
        typer.Option(
            "--relay-only/--no-relay-only",
            help="Media only through the charter's TURN relays (needs --turn).",
        ),
    ] = DEFAULT_POLICY.relay_only,
    peer_timeout: Annotated[
        int,
        typer.Option(
            "--peer-timeout",
            help="Seconds a member may be unreachable before it is dropped from a call.",
        ),
    ] = DEFAULT_POLICY.peer_timeout_s,
    mesh_limit: Annotated[
        int,
        typer.Option(
            "--mesh-limit",
            help="Most terminals in a mesh call; a larger call goes through an --sfu.",
        ),
    ] = DEFAULT_POLICY.mesh_limit,
    check_threshold: Annotated[
        list[str] | None,
        typer.Option(
            "--check-threshold",
            help="NAME=VALUE: a readiness-check verdict or live-warning limit other than its "
            "default, e.g. green_one_way_ms=100 (repeatable; see docs/operations.md).",
        ),
    ] = None,
    version: Annotated[
        int,
        typer.Option("--version", help="Charter version; a new one must be higher than the last."),
    ] = 1,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Draft a charter from the sites' public records and their terminals' enrolments.

    Example: hotline line propose sochi-washington --site ./sochi --site ./washington
    --exchange wss://exchange.example:8443#sha256:<fp> --out line.json
    """
    if version > INT_MAX:  # checked before anything is written (the model checks >= 1)
        raise UsageError(f"--version {version} is too large (at most {INT_MAX})")
    policy = Policy(
        cipher_suite=cipher_suite.value,
        kem=kem.value,
        rekey_interval_s=rekey_interval,
        max_participants=max_participants,
        readiness_interval_s=readiness_interval,
        recording_allowed=recording,
        relay_only=relay_only,
        peer_timeout_s=peer_timeout,
        mesh_limit=mesh_limit,
        check_thresholds=parse_check_thresholds(check_threshold or ()),
    )
    charter = propose_line(
        line,
        site,
        terminal or None,
        exchange or (),
        turn or (),
        policy,
        version,
        sfus=sfu or (),
    )
    write_draft(out, charter, overwrite=force)
    if json_output:
        print_json(
            {
                "line_id": charter.line_id,
                "version": charter.version,
                "out": str(out),
                "digest": charter.digest().hex(),
                "digest_code": charter.digest_code,
                "sites": [s.site_id for s in charter.sites],
                "terminals": [t.terminal_id for t in charter.terminals],
            }
        )
        return
    console.print(
        f"Proposed line [bold]{escape(charter.line_id)}[/] version {charter.version}: "
        f"{len(charter.sites)} sites, {len(charter.terminals)} terminals -> {escape(str(out))}"
    )
    console.print(f"  charter digest: [bold]{charter.digest_code}[/]")
    console.print(
        f"Next: each site checks it (hotline line show {escape(str(out))}) and signs it "
        f"(hotline line sign {escape(str(out))} --site DIR)."
    )


@app.command("sign")
def sign(
    charter: CharterPath,
    site: Annotated[Path, typer.Option("--site", help="Your site folder (holds operator.key).")],
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file",
            help=f"Passphrase of the operator key (else ${PASSPHRASE_ENV}).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Add your site's signature to a charter (after reading it with `line show`).

    A site folder that keeps a previous operator key (after `site rotate-key`) also signs
    the handover from it."""
    signed = sign_charter(charter, site, read_passphrase(passphrase_file))
    check = signed.check()
    missing = [f"{s} ({v})" for s, v in check.signatures.items() if v != SIGNATURE_VALID]
    if json_output:
        print_json(_signatures_report(signed, check, charter))
        return
    console.print(
        f"Signed line [bold]{escape(signed.line_id)}[/] version {signed.version} "
        f"(digest {signed.charter.digest_code})."
    )
    if missing:
        console.print("  still needed: " + ", ".join(escape(m) for m in missing))
    else:
        console.print("  every site has signed; run: hotline line verify " + escape(str(charter)))


def _signatures_report(signed: SignedCharter, check: CharterCheck, path: Path) -> dict[str, Any]:
    return {
        "line_id": signed.line_id,
        "version": signed.version,
        "charter": str(path),
        "digest": signed.charter.digest().hex(),
        "digest_code": signed.charter.digest_code,
        "signatures": dict(check.signatures),
        "handovers": dict(check.handovers),
        "missing": sorted(s for s, v in check.signatures.items() if v == SIGNATURE_MISSING),
        "complete": check.complete,
        "valid": check.ok,
    }


@app.command("merge")
def merge(
    copies: Annotated[
        list[Path],
        typer.Argument(help="Copies of one proposed charter, each signed by some sites."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the merged charter.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Combine copies of one charter that sites signed in parallel (the proposer sends the
    same draft to every site at once instead of A->B->C->A). Refuses copies whose content
    differs (naming the field) and any signature that does not verify.

    Example: hotline line merge signed-by-sochi.json signed-by-washington.json -o line.json
    """
    if out.exists() and not force and out not in copies:
        raise UsageError(f"{out}: already exists; choose another file or pass --force")
    merged = merge_charters(copies)
    write_charter(out, merged)
    check = merged.check()
    if json_output:
        print_json({**_signatures_report(merged, check, out), "copies": [str(c) for c in copies]})
        return
    signed_by = sorted(s for s, v in check.signatures.items() if v == SIGNATURE_VALID)
    console.print(
        f"Merged {len(copies)} copies of line [bold]{escape(merged.line_id)}[/] version "
        f"{merged.version} -> {escape(str(out))} (digest {merged.charter.digest_code})",
        soft_wrap=True,
    )
    console.print("  signed by: " + (", ".join(escape(s) for s in signed_by) or "nobody"))
    missing = sorted(s for s, v in check.signatures.items() if v == SIGNATURE_MISSING)
    if missing:
        console.print("  still needed: " + ", ".join(escape(m) for m in missing))
    else:
        console.print("  every site has signed; run: hotline line verify " + escape(str(out)))


def _describe(signed: SignedCharter, check: CharterCheck) -> dict[str, Any]:
    c = signed.charter
    problems: list[str] = []
    if check.structure_error:
        problems.append(check.structure_error)
    problems += [
        f"terminal {tid!r}: {msg}" for tid, msg in check.enrolments.items() if msg is not None
    ]
    problems += [
        f"signature of site {sid!r} is {status}"
        for sid, status in check.signatures.items()
        if status != SIGNATURE_VALID
    ]
    problems += [
        f"signature by site {sid!r}, which is not in the charter" for sid in check.unknown_signers
    ]
    problems += [
        f"handover of site {sid!r} by its previous operator key is {status}"
        for sid, status in check.handovers.items()
        if status != SIGNATURE_VALID
    ]
    return {
        "line_id": c.line_id,
        "version": c.version,
        "created_at": c.created_at,
        "digest": c.digest().hex(),
        "digest_code": c.digest_code,
        "sites": [
            {
                "site_id": s.site_id,
                "name": s.name,
                "operator_key": s.operator_key.hex(),
                "fingerprint": s.operator_key.fingerprint,
                "signature": check.signatures.get(s.site_id, "invalid"),
            }
            for s in c.sites
        ],
        "terminals": [
            {
                "terminal_id": t.terminal_id,
                "site_id": t.site_id,
                "name": t.name,
                "role": str(t.role),
                "identity_key": t.identity_key.hex(),
                "fingerprint": t.identity_key.fingerprint,
                "enrolment": "valid" if check.enrolments.get(t.terminal_id) is None else "invalid",
            }
            for t in c.terminals
        ],
        "exchanges": [{"url": e.url, "tls_fingerprint": e.tls_fingerprint} for e in c.exchanges],
        "turn_relays": list(c.turn_relays),
        "sfus": [{"url": e.url, "tls_fingerprint": e.tls_fingerprint} for e in c.sfus],
        "policy": dataclasses.asdict(c.policy),
        "handovers": [
            {
                "site_id": sid,
                "previous_key": h.previous_key.hex(),
                "previous_fingerprint": h.previous_key.fingerprint,
                "signature": check.handovers.get(sid, SIGNATURE_INVALID),
            }
            for sid, h in sorted(signed.handovers.items())
        ],
        "unknown_signers": list(check.unknown_signers),
        "complete": check.complete,
        "valid": check.ok,
        "problems": problems,
    }


def _label(ident: str, name: str) -> str:
    return escape(ident) if ident == name else f"{escape(ident)} ({escape(name)})"


def _mark(status: str) -> str:
    return {"valid": "[green]valid[/]", "missing": "[yellow]missing[/]"}.get(
        status, "[bold red]INVALID[/]"
    )


@app.command("show")
def show(
    charter: CharterPath,
    json_output: JsonOption = False,
) -> None:
    """Print a charter for people: sites, terminals, roles, key fingerprints to read aloud,
    policy, exchanges, relays, and each signature with whether it verifies."""
    signed = load_charter(charter)
    info = _describe(signed, signed.check())
    if json_output:
        print_json(info)
        return
    try:
        created = datetime.datetime.fromtimestamp(info["created_at"], tz=datetime.UTC)
        when = f"{created:%Y-%m-%d %H:%M:%S} UTC"
    except (ValueError, OverflowError, OSError):  # the other side's clock or a forgery
        when = f"at an impossible time ({info['created_at']} s since 1970)"
    console.print(
        f"[bold]Line {escape(info['line_id'])}[/]  version {info['version']}  created {when}"
    )
    console.print(f"Charter digest (read aloud): [bold]{info['digest_code']}[/]")

    sites = Table(title="Sites", title_justify="left", box=box.SIMPLE_HEAD)
    sites.add_column("site", overflow="fold")
    sites.add_column("operator key fingerprint", no_wrap=True)
    sites.add_column("signature", no_wrap=True)
    for s in info["sites"]:
        sites.add_row(_label(s["site_id"], s["name"]), s["fingerprint"], _mark(s["signature"]))
    console.print(sites)
    for h in info["handovers"]:
        console.print(
            f"Site {escape(h['site_id'])} replaces its operator key; handover signed by its "
            f"previous key {h['previous_fingerprint']}: {_mark(h['signature'])}",
            soft_wrap=True,
        )

    terminals = Table(title="Terminals", title_justify="left", box=box.SIMPLE_HEAD)
    terminals.add_column("terminal", overflow="fold")
    terminals.add_column("site / role", overflow="fold")
    terminals.add_column("identity key fingerprint", no_wrap=True)
    terminals.add_column("enrolment", no_wrap=True)
    for t in info["terminals"]:
        terminals.add_row(
            _label(t["terminal_id"], t["name"]),
            f"{escape(t['site_id'])} / {t['role']}",
            t["fingerprint"],
            _mark(t["enrolment"]),
        )
    console.print(terminals)

    p = info["policy"]
    console.print(
        f"Policy: suite {p['cipher_suite']}, KEM {p['kem']}, "
        f"rekey every {p['rekey_interval_s']} s, at most {p['max_participants']} participants, "
        f"readiness check every {p['readiness_interval_s']} s, "
        f"recording {'allowed' if p['recording_allowed'] else 'forbidden'}, "
        f"media {'through the TURN relays only' if p['relay_only'] else 'direct or relayed'}, "
        f"an unreachable member dropped after {p['peer_timeout_s']} s, "
        f"mesh up to {p['mesh_limit']} terminals"
    )
    console.print(describe_check_thresholds(signed.charter.policy.check_thresholds))
    if info["exchanges"]:
        for e in info["exchanges"]:
            pin = e["tls_fingerprint"] or "no TLS pin"
            console.print(f"Exchange: {escape(e['url'])}  ({escape(pin)})")
    else:
        console.print("Exchange: none")
    console.print("TURN relays: " + (", ".join(escape(u) for u in info["turn_relays"]) or "none"))
    for e in info["sfus"]:
        pin = e["tls_fingerprint"] or "no TLS pin"
        console.print(f"SFU: {escape(e['url'])}  ({escape(pin)})")
    if info["valid"]:
        console.print("[bold green]VALID[/]: complete, every signature verifies")
    else:
        state = "INCOMPLETE" if not info["complete"] else "NOT VALID"
        console.print(f"[bold red]{state}[/]")
        for problem in info["problems"]:
            console.print(f"  - {escape(problem)}")


@app.command("verify")
def verify(
    charter: CharterPath,
    json_output: JsonOption = False,
) -> None:
    """Exit 0 only if the charter is complete and every signature verifies; 1 if a check
    fails; 2 if the file cannot be read."""
    try:
        signed = load_charter(charter)
    except HotlineError as exc:
        if json_output:  # a machine reading stdout still gets a verdict, and exit 2
            print_json({"valid": False, "reason": exc.reason, "error": str(exc)}, ok=False)
        raise
    try:
        signed.verify()
    except HotlineError as exc:
        if json_output:
            print_json(
                {
                    "valid": False,
                    "reason": exc.reason,
                    "error": str(exc),
                    "line_id": signed.line_id,
                    "version": signed.version,
                },
                ok=False,
            )
        else:
            err_console.print(
                f"[bold red]error:[/] {escape(str(charter))}: {escape(str(exc))}", soft_wrap=True
            )
        raise typer.Exit(EXIT_CHECK_FAILED) from None
    c = signed.charter
    if json_output:
        print_json(
            {
                "valid": True,
                "line_id": c.line_id,
                "version": c.version,
                "digest": c.digest().hex(),
                "digest_code": c.digest_code,
                "sites": [s.site_id for s in c.sites],
            }
        )
        return
    console.print(
        f"OK: line {escape(c.line_id)} version {c.version} is complete; "
        f"{len(c.sites)} site signatures and {len(c.terminals)} enrolments verify. "
        f"Digest: {c.digest_code}"
    )


def parse_check_thresholds(items: Iterable[str]) -> CheckThresholds:
    """``NAME=VALUE`` options into the policy's thresholds (checked by the charter's
    validation like every policy field)."""
    values: dict[str, int] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in CheckThresholds.RANGES:
            known = ", ".join(CheckThresholds.RANGES)
            raise UsageError(f"--check-threshold {item!r}: give NAME=VALUE, NAME one of {known}")
        try:
            values[name] = int(text)
        except ValueError:
            raise UsageError(f"--check-threshold {item!r}: the value must be an integer") from None
    return dataclasses.replace(DEFAULT_CHECK_THRESHOLDS, **values)


def describe_check_thresholds(t: CheckThresholds) -> str:
    """One paragraph for ``line show``: what the verdict and the live warnings use."""
    origin = "defaults" if t == DEFAULT_CHECK_THRESHOLDS else "signed in this charter"
    return (
        f"Check thresholds ({origin}): green when one-way delay <= {t.green_one_way_ms} ms, "
        f"loss <= {t.green_loss_permille / 10:g} %, jitter <= {t.green_jitter_ms} ms, "
        f"E-model MOS >= {t.green_mos_x100 / 100:.2f}, PESQ >= {t.green_pesq_x100 / 100:.2f}, "
        f"video >= {t.min_video_fps} frames/s, audio >= {t.min_audio_fps} packets/s; "
        f"red when one-way > {t.amber_one_way_ms} ms, loss > {t.amber_loss_permille / 10:g} %, "
        f"MOS < {t.amber_mos_x100 / 100:.2f}, PESQ < {t.amber_pesq_x100 / 100:.2f}; "
        f"live warnings when jitter > {t.live_jitter_ms} ms, round trip > {t.live_rtt_ms} ms, "
        f"loss > {t.live_loss_permille / 10:g} %"
    )
