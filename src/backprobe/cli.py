"""The ``backprobe`` command: thin commands over the library.

Heavy parts (torch, the lab) are imported inside the commands, so ``--help`` is quick.
Errors caused by user input print one line and exit with status 1, no traceback.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._format import compact_number, counted
from ._version import __version__
from .diagnose.training import UpdateRule  # numpy only: --help stays quick
from .errors import BackprobeError, CheckInputError, RunDatabaseError, RunNotFoundError
from .store.db import DB_ENV, DEFAULT_DB

if TYPE_CHECKING:
    from .diagnose.prescribe import Prescriptions
    from .store.run import StoredRun

app = typer.Typer(
    name="backprobe",
    help=(
        "See, explain and cure vanishing and exploding gradients in PyTorch models.\n\n"
        "Start with `backprobe demo`: deep networks whose gradient vanishes, recurrent nets "
        "that forget, a transformer that spikes, each shown layer by layer (or time step by "
        "time step) beside its cure. Every run is stored in a "
        "run database (default ./backprobe-runs/runs.db); `backprobe runs` lists them and "
        "`backprobe show RUN` summarises one."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

DbOption = Annotated[
    Path,
    typer.Option(
        "--db",
        envvar=DB_ENV,
        help=f"Run database file (env {DB_ENV}).",
        show_default=True,
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"backprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """See, explain and cure vanishing and exploding gradients in PyTorch models."""


@app.command()
def demo(
    db: DbOption = DEFAULT_DB,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer steps: a smoke run for CI, seconds.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed for data and weights.")] = 0,
) -> None:
    """Watch gradients vanish and explode, in three chapters of about a minute each.

    1: a short vs a 50-layer network, sigmoid vs ReLU + He init. 2: the short memory of
    RNNs (tanh RNN, LSTM, GRU, per time step). 3: a transformer that spikes, post-LN vs
    pre-LN, and the guard. Each model trains with the probe attached; its gradient
    profile, verdict and findings are printed and every run is stored in the run database.
    """
    from .lab.demo import run_demo

    run_demo(db=db, quick=quick, seed=seed, console=Console())


@app.command()
def runs(db: DbOption = DEFAULT_DB) -> None:
    """List the runs stored in the run database, oldest first."""
    from .store.db import RunDatabase

    with RunDatabase(db, read_only=True) as database:
        infos = database.runs()
    # escape(): names and paths are text, not rich markup ("net[relu]", "a[/b]")
    table = Table(
        title=f"runs in {escape(str(db))}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for header in ("id", "name", "status", "steps", "layers", "started"):
        numeric = header in ("id", "steps", "layers")
        # a long name wraps rather than being cut: it is what `show` is called with
        table.add_column(
            header,
            justify="right" if numeric else "left",
            overflow="fold" if header == "name" else "ellipsis",
        )
    for r in infos:
        started = dt.datetime.fromtimestamp(r.created).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(r.id), escape(r.name), r.status, str(r.steps), str(r.layers), started)
    Console().print(table if infos else f"No runs in {escape(str(db))} yet.")


def _run_heading(stored: StoredRun) -> str:
    """'run 3 **name** — finished, 1 recorded step' (rich markup)."""
    steps = counted(stored.steps.size, "recorded step")
    return f"run {stored.id} [bold]{escape(stored.name)}[/bold] — {stored.status}, {steps}"


@app.command()
def show(
    run: Annotated[str, typer.Argument(help="Run id, or name (the newest run of that name).")],
    db: DbOption = DEFAULT_DB,
    step: Annotated[
        int | None, typer.Option(help="Recorded step to show (default: the last one).")
    ] = None,
    params_only: Annotated[
        bool, typer.Option("--params-only", help="Only layers that own parameters.")
    ] = False,
    time: Annotated[
        bool,
        typer.Option(
            "--time",
            help="Also the recurrent layers' gradient through time: ||dL/dh_t|| per time "
            "step against Pascanu's bound, and the memory horizon.",
        ),
    ] = False,
) -> None:
    """Summarise a stored run: per-layer gradient flow at a step, the verdict, and the
    findings stored by `backprobe diagnose`."""
    from .diagnose.storage import load_findings
    from .report.console import output_console
    from .report.guard import print_guard
    from .report.recording import measurement_lines, schedule_line
    from .report.text import print_findings, print_summary
    from .store.run import open_run

    stored = open_run(db, run)
    console = output_console()
    console.print(_run_heading(stored))
    for line in filter(None, [schedule_line(stored), *measurement_lines(stored)]):
        console.print(f"[dim]{escape(line)}[/dim]")
    print_summary(stored, step=step, console=console, params_only=params_only, horizon=not time)
    print_guard(stored, console)
    if time:
        from .report.through_time import print_time_profiles

        print_time_profiles(stored, step=step, console=console)
    findings = load_findings(db, stored.id)
    if findings:
        console.print(f"[bold]findings[/bold] ({len(findings)}, stored by backprobe diagnose)")
        print_findings(findings, console)
    else:
        console.print(f"[dim]no stored findings: run `backprobe diagnose {stored.id}`[/dim]")


@app.command()
def diagnose(
    run: Annotated[str, typer.Argument(help="Run id, or name (the newest run of that name).")],
    db: DbOption = DEFAULT_DB,
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate, to size the updates (default: the run's 'lr')."),
    ] = None,
    optimizer: Annotated[
        UpdateRule,
        typer.Option(help="'sgd' (update lr·|g|) or 'adam' (update lr per element)."),
    ] = "sgd",
) -> None:
    """Diagnose a stored run (also a crashed or interrupted one): findings with their
    evidence, cause and remedies, saved in the run database for `backprobe show`."""
    from .diagnose.depth import first_to_last_ratio
    from .diagnose.rules import diagnose as diagnose_run
    from .diagnose.storage import save_findings
    from .diagnose.verdict import verdict_of
    from .report.console import output_console
    from .report.text import print_findings, verdict_text
    from .store.run import open_run

    stored = open_run(db, run)
    findings = diagnose_run(stored, lr=lr, optimizer=optimizer)
    console = output_console()
    console.print(_run_heading(stored))
    print_findings(findings, console)
    if stored.steps.size:
        last = int(stored.steps[-1])
        ratio = first_to_last_ratio(stored)
        console.print(verdict_text(verdict_of(findings, last, stored.layers, ratio)))
    # shown before they are saved: on read-only storage the user still sees them
    save_findings(db, stored.id, findings)
    saved = counted(len(findings), "finding")
    console.print(f"[dim]saved {saved} to run {stored.id} in {escape(str(db))}[/dim]")


@app.command()
def check(
    factory: Annotated[
        str,
        typer.Argument(help="MODULE:FACTORY, a function that builds the model (no arguments)."),
    ],
    input_shape: Annotated[
        str, typer.Option("--input-shape", help="Random input shape, batch first: 32,784.")
    ],
    seed: Annotated[int, typer.Option(help="Seed of the random input and loss.")] = 0,
    fail_on: Annotated[
        str,
        typer.Option(help="Exit 2 when a finding is at least this severe: warning, error, none."),
    ] = "none",
    prescribe: Annotated[
        bool,
        typer.Option(
            "--prescribe",
            help="Apply each remedy that changes the model to a copy, check it again on "
            "the same batch, and print the measured effect, best first.",
        ),
    ] = False,
) -> None:
    """Before training: will this model's gradients vanish or explode? One forward and
    backward pass on a random batch at initialisation; prints the verdict, the mean-field
    and Jacobian predictions, and findings with remedies (--prescribe: measured too)."""
    from .diagnose.check import build_model, check, parse_shape
    from .diagnose.finding import SEVERITIES
    from .report.console import output_console
    from .report.text import print_findings

    if fail_on not in (*SEVERITIES, "none"):
        raise CheckInputError(f"Expected --fail-on warning, error or none, but got {fail_on!r}.")
    shape = parse_shape(input_shape)
    model = build_model(factory)
    result = check(model, input_shape=shape, seed=seed)
    console = output_console()
    console.print(f"[bold]{escape(factory)}[/bold] at initialisation, input {shape}")
    console.print(f"verdict: {escape(result.verdict.message)}")
    if result.mean_field is not None:
        console.print(f"mean field: {escape(str(result.mean_field))}")
    if result.jacobian is not None:
        j = result.jacobian
        console.print(
            f"jacobian: {j.verdict}, mean σ² = {compact_number(j.mean_squared)}, σ from "
            f"{compact_number(j.min)} to {compact_number(j.max)} ({result.jacobian_note})"
        )
    print_findings(list(result), console)
    console.print(f"[dim]checked in {result.seconds:.1f} s[/dim]")
    if prescribe:
        from .diagnose.prescribe import prescribe as measure

        _print_prescriptions(measure(model, input_shape=shape, seed=seed), console)
    worst = SEVERITIES.index(result.worst) if result else -1
    if fail_on != "none" and worst >= SEVERITIES.index(fail_on):
        sys.exit(2)  # not typer.Exit: main() runs click with standalone_mode=False


def _print_prescriptions(prescriptions: Prescriptions, console: Console) -> None:
    """The measured remedies as a table, best first, and those that do not apply."""
    from .diagnose.prescribe import ratio_text

    if not prescriptions:
        console.print(
            "no remedy that changes the model to measure: the findings' remedies are advice"
        )
    else:
        table = Table(
            title="measured prescriptions (each applied to a copy, checked on the same batch)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for header in ("remedy", "first/last ratio", "χ1", "worst finding", "helps"):
            table.add_column(header, overflow="fold" if header == "remedy" else "ellipsis")
        for p in prescriptions:
            chi = (
                f"{p.before.chi1:.3g} → {p.after.chi1:.3g}"
                if p.before.chi1 is not None and p.after.chi1 is not None
                else ""
            )
            table.add_row(
                escape(p.remedy.title),
                f"{ratio_text(p.before.ratio)} → {ratio_text(p.after.ratio)}",
                chi,
                f"{p.before.worst_text} → {p.after.worst_text}",
                "yes" if p.helps else "no",
            )
        console.print(table)
        console.print(
            f"best: {escape(prescriptions[0].remedy.call)}"
            if prescriptions[0].helps
            else "no remedy helps this model"
        )
    for remedy, why in prescriptions.skipped:
        console.print(f"[dim]not applicable: {escape(remedy.title)}: {escape(why)}[/dim]")


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="Run id, or name (the newest run of that name).")],
    other: Annotated[
        str | None, typer.Argument(help="A second run, to compare side by side.")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="HTML file to write.", show_default=True)
    ] = Path("report.html"),
    db: DbOption = DEFAULT_DB,
) -> None:
    """Write a self-contained HTML report of a run (or two, side by side): the verdict,
    the findings with their remedies, the per-layer table and the figures. Works on a run
    whose process was killed: it shows what was recorded up to the last flush."""
    from .report.html import write_report
    from .store.run import open_run

    runs = [open_run(db, run)] + ([open_run(db, other)] if other is not None else [])
    path = write_report(runs, output)
    typer.echo(f"wrote {path}")


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="Run id, or name (the newest run of that name).")],
    to: Annotated[
        str, typer.Option("--to", help="Where to: tensorboard, wandb or mlflow.")
    ] = "tensorboard",
    out: Annotated[Path, typer.Option(help="Folder for TensorBoard and W&B files.")] = Path(
        "exported"
    ),
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: MLflow's own).")
    ] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Write a stored run's statistics to TensorBoard, W&B or MLflow, on its own step
    axis; also a run whose process died (what was flushed)."""
    from .integrations.export import export_run
    from .store.run import open_run

    typer.echo(f"wrote {export_run(open_run(db, run), to, out=out, tracking_uri=tracking_uri)}")


lab_app = typer.Typer(
    help=(
        "The lab: the seeds' examples and the classic experiments (adding, copy, temporal "
        "order, latch, depth sweeps…), each a named experiment with a quick and a full "
        "configuration. `backprobe lab list`, `backprobe lab run NAME`, `backprobe lab table`."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(lab_app, name="lab")


@lab_app.command("list")
def lab_list(
    settings: Annotated[
        bool, typer.Option("--settings", help="Also show every setting, its type and values.")
    ] = False,
) -> None:
    """List the lab's experiments (and, with --settings, what --set can change)."""
    from .lab.experiments import experiments
    from .lab.experiments.show import print_experiments

    print_experiments(Console(), experiments(), settings=settings)


@lab_app.command("run")
def lab_run(
    name: Annotated[str, typer.Argument(help="Experiment name (see `backprobe lab list`).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, key=value (repeatable): --set lr=0.01."),
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option("--variant", "-v", help="Run only this variant (repeatable)."),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Number of seeds per variant.")] = 1,
    first_seed: Annotated[int, typer.Option(help="The first seed.")] = 0,
    jobs: Annotated[int, typer.Option(help="Runs in parallel processes.")] = 1,
    quick: Annotated[
        bool, typer.Option("--quick", help="The CI-sized configuration: seconds per run.")
    ] = False,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Run an experiment: every variant for every seed, stored in the run database with
    its config; prints live loss and gradient health, then what each run measured."""
    from .lab.experiments import get_experiment, run_experiment
    from .lab.experiments.show import print_results

    console = Console()
    results = run_experiment(
        name,
        settings=set_ or (),
        seeds=seeds,
        first_seed=first_seed,
        variants=variant,
        quick=quick,
        jobs=jobs,
        db=db,
        console=console,
    )
    print_results(console, get_experiment(name), results)
    console.print(f"[dim]stored in {escape(str(db))}; `backprobe lab table` compares[/dim]")


@lab_app.command("table")
def lab_table(
    names: Annotated[
        list[str] | None, typer.Argument(help="Experiments to show (default: all).")
    ] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """The results table: experiment, variant, metric, value (mean ± std over seeds),
    published reference and verdict, from the newest run of each variant."""
    from .lab.experiments import get_experiment
    from .lab.experiments.show import print_rows
    from .lab.experiments.table import results_rows

    for n in names or ():
        get_experiment(n)  # an unknown name is a user error, not an empty table
    print_rows(Console(), results_rows(db, names))


#: Added to run-database errors: the library's messages speak of Python, not of options.
DB_HINT = f"With the command line, --db PATH or {DB_ENV}=PATH names another run database."
#: Added to unknown-run errors.
RUNS_HINT = "`backprobe runs --db PATH` lists the runs."


def _usage_error_line(exc: Exception) -> str | None:
    """One line for a click usage error (unknown option, missing argument, bad value),
    recognised by its interface: recent typer vendors click, so `import click` may fail.
    None for anything else."""
    message = getattr(exc, "format_message", None)
    if not callable(message) or not isinstance(getattr(exc, "exit_code", None), int):
        return None
    ctx = getattr(exc, "ctx", None)
    where = getattr(ctx, "command_path", None) or "backprobe"
    text = " ".join(str(message()).split())
    return f"backprobe: error: {text} (see `{where} --help`)"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a user's error (a run database, a value, a usage error such as
    an unknown option) becomes one line on stderr and exit status 1, no traceback.
    ``argv``: the arguments after ``backprobe`` (default: the command line's)."""
    try:
        app(args=argv, standalone_mode=False)
    except BackprobeError as exc:
        hints = {RunDatabaseError: DB_HINT, RunNotFoundError: RUNS_HINT}
        hint = next((f" {h}" for kind, h in hints.items() if isinstance(exc, kind)), "")
        print(f"backprobe: error: {exc}{hint}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("backprobe: aborted", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("backprobe: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `backprobe`: its help, as `-h`
            print(exc.format_message())  # type: ignore[attr-defined]  # a click exception
            sys.exit(0)
        line = _usage_error_line(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
