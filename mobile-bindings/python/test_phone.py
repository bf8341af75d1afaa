"""The generated Python bindings, used as a phone app would use them, against a real desktop.

Each test starts a real `errand` desktop process in a temporary directory (`errand up` with
the default policy: shell commands ask the phone first) and opens a `Node` from the bindings
as the phone, in another temporary directory. They talk over iroh on loopback. Nothing waits
for a guessed time: the tests wait for listener events and for files, each with a deadline.

Run it with `scripts/test-bindings`, which builds the library and `errand`, copies
`liberrand_ffi.so` next to `errand_ffi.py`, and runs `python3 -m unittest`. To run it by hand
from a copy of this directory with the library beside it:

    ERRAND_BIN=/path/to/target/debug/errand python3 -m unittest -v test_phone
"""

import asyncio
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from errand_ffi import (
    ApprovalState,
    DeviceRole,
    ErrandError,
    ListenerError,
    MessageKind,
    Node,
    NodeEvent,
    NodeListener,
    ScheduleSpec,
    TaskStatus,
)

HERE = pathlib.Path(__file__).resolve().parent
ERRAND = os.environ.get("ERRAND_BIN") or str(HERE.parent.parent / "target" / "debug" / "errand")

# Generous: a loaded 2-core CI machine is slow; an idle one finishes in a few seconds.
DEADLINE = 90.0

# The default policy, spelled out: a shell command needs the phone's approval.
POLICY = """\
[actions]
shell = "ask"
"""


class Recorder(NodeListener):
    """Keeps every event; tests wait on it with a deadline."""

    def __init__(self):
        self.events = []
        self.calls = 0
        self.cond = threading.Condition()

    def on_event(self, event):
        with self.cond:
            self.calls += 1
            self.events.append(event)
            self.cond.notify_all()

    def _wait(self, what, pred, timeout):
        with self.cond:
            found = self.cond.wait_for(
                lambda: next((e for e in self.events if pred(e)), None), timeout
            )
            if found is None:
                seen = "\n  ".join(str(e) for e in self.events) or "(none)"
                raise AssertionError(f"no {what} event within {timeout:.0f} s; events:\n  {seen}")
            return found

    async def wait_for(self, what, pred, timeout=DEADLINE):
        return await asyncio.to_thread(self._wait, what, pred, timeout)

    def task_statuses(self, task_id):
        with self.cond:
            return [
                e.status
                for e in self.events
                if e.is_task_changed() and e.task_id == task_id
            ]


class Exploding(NodeListener):
    """A listener whose every call throws: the events must go on, the app must not crash."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def on_event(self, event):
        with self.lock:
            self.calls += 1
            n = self.calls
        if n % 2:
            raise RuntimeError("a bug in the app's listener")
        raise ListenerError.Failed(reason="the app's listener gave up")


def task_changed(task_id, status=None):
    return lambda e: (
        e.is_task_changed()
        and e.task_id == task_id
        and (status is None or e.status == status)
    )


class Desktop:
    """A real `errand` desktop process on its own home, listening on loopback."""

    def __init__(self, root):
        self.home = root / "desk"
        self.policy = root / "policy.toml"
        self.policy.write_text(POLICY)
        self.ticket_file = root / "ticket.txt"
        self.log_path = root / "desk.log"
        self.proc = None

    def _start(self, args):
        env = dict(os.environ, ERRAND_BIND="127.0.0.1:0", ERRAND_NO_MDNS="true", ERRAND_LOG="warn")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [ERRAND, "--home", str(self.home), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def up(self):
        """`errand up`: creates the space, writes a one-time ticket (admitted without asking)."""
        self._start(["up", "--name", "desk", "--yes", "--ticket-file", str(self.ticket_file),
                     "--policy", str(self.policy)])
        deadline = time.monotonic() + DEADLINE
        while True:
            # The file is complete once its line ends.
            text = self.ticket_file.read_text() if self.ticket_file.exists() else ""
            if text.endswith("\n"):
                return text.strip()
            if self.proc.poll() is not None:
                raise AssertionError(f"errand up exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"errand up wrote no ticket within {DEADLINE:.0f} s:\n{self.output()}")
            time.sleep(0.02)

    def serve(self):
        """`errand serve` on the same home: the desktop is back."""
        self._start(["serve", "--policy", str(self.policy)])

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def stop(self):
        """A clean stop (SIGTERM), then a kill if it does not end in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def output(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cli(self, *args):
        """A one-shot command on the desktop's home (talks to the running node)."""
        out = subprocess.run([ERRAND, "--home", str(self.home), "--json", *args],
                             capture_output=True, text=True, timeout=DEADLINE)
        if out.returncode != 0:
            raise AssertionError(f"errand {' '.join(args)} failed: {out.stderr}")
        return json.loads(out.stdout)


class PhoneTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        if not os.access(ERRAND, os.X_OK):
            self.fail(f"no errand binary at {ERRAND}: build it (cargo build -p errand) or set ERRAND_BIN")
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="errand-phone-"))
        self.desk = Desktop(self.root)
        self.phone = None

    async def asyncTearDown(self):
        if self.phone is not None:
            await self.phone.close()
        self.desk.stop()
        if os.environ.get("KEEP_TMP"):
            print(f"\n(kept {self.root})", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    async def wait(self, rec, what, pred):
        """Waits for an event; on failure, shows the desktop's log too."""
        try:
            return await rec.wait_for(what, pred)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- desktop log ---\n{self.desk.output()}") from None

    async def open_phone(self):
        self.phone = await Node.open(str(self.root / "phone"), "127.0.0.1:0")
        return self.phone

    async def pair(self, recorder):
        ticket = self.desk.up()
        phone = await self.open_phone()
        phone.subscribe(recorder)
        paired = await phone.pair(ticket, "pocket")
        self.assertEqual(paired.host_name, "desk")
        self.assertTrue(paired.code)
        return phone

    async def test_pair_send_approve_result_history(self):
        rec = Recorder()
        phone = await self.pair(rec)

        status = await phone.status()
        self.assertTrue(status.paired)
        self.assertEqual(status.name, "pocket")
        self.assertEqual(status.role, DeviceRole.PHONE)
        devices = await phone.devices()
        self.assertEqual(sorted(d.name for d in devices), ["desk", "pocket"])
        self.assertTrue(any(d.this_device and d.role == DeviceRole.PHONE for d in devices))
        await self.wait(rec, "join code", lambda e: e.is_join_code())

        # A direct shell command: with the default policy the desktop asks first.
        sent = await phone.send("/sh echo hi")
        self.assertEqual(sent.target_name, "desk")
        task = sent.task_id
        asked = await self.wait(
            rec,
            "approval requested",
            lambda e: e.is_approval_requested() and e.task_id == task,
        )
        self.assertIn("echo hi", asked.action)
        await self.wait(rec, "task waiting for approval", task_changed(task, TaskStatus.WAITING_APPROVAL))
        pending = await phone.approvals()
        self.assertEqual([a.id for a in pending], [asked.approval_id])
        self.assertEqual(pending[0].state, ApprovalState.PENDING)
        self.assertEqual(pending[0].risk_class, "shell")
        self.assertEqual(pending[0].requested_by, "desk")

        decided = await phone.decide(asked.approval_id[:8], True)
        self.assertEqual(decided.state, ApprovalState.APPROVED)
        self.assertEqual(decided.decided_by, "pocket")

        done = await self.wait(rec, "task done", task_changed(task, TaskStatus.DONE))
        self.assertEqual((done.result or "").strip(), "hi")
        # Every status change this device saw (quick ones may be seen together, as the last).
        statuses = rec.task_statuses(task)
        self.assertEqual(statuses[-1], TaskStatus.DONE, statuses)
        self.assertIn(TaskStatus.WAITING_APPROVAL, statuses[:-1], statuses)

        record = await phone.task(task)
        self.assertEqual(record.status, TaskStatus.DONE)
        self.assertEqual((record.result or "").strip(), "hi")
        self.assertEqual(record.prompt, "/sh echo hi")
        self.assertIsNotNone(record.finished_ms)
        self.assertEqual([t.id for t in await phone.tasks()], [task])
        threads = await phone.threads()
        self.assertEqual([t.id for t in threads], [sent.thread_id])
        self.assertEqual(await phone.approvals(), [])
        self.assertEqual([a.state for a in await phone.approvals(False)], [ApprovalState.APPROVED])

        # The thread's history: every commit, by both devices, in order.
        history = await phone.history(sent.thread_id)
        messages = [(h.device, h.message) for h in history]
        self.assertTrue(any(d == "pocket" and "queued" in m for d, m in messages), messages)
        self.assertTrue(any(d == "desk" and "requested" in m for d, m in messages), messages)
        self.assertTrue(any(d == "pocket" and "approved by pocket" in m for d, m in messages), messages)
        times = [h.time_ms for h in history]
        self.assertTrue(all(t > 0 for t in times))
        # The thread as it was at its first commit: a new thread comes with its first task,
        # still queued then (tasks live in buckets); at its last commit the task had run.
        def tasks_of(doc):
            return {t: v for bucket in doc.get("tasks", {}).values() for t, v in bucket.items()}
        self.assertEqual(history[0].device, "pocket")
        first = tasks_of(json.loads(await phone.document_at([history[0].hash], sent.thread_id)))
        self.assertEqual(list(first), [task])
        self.assertEqual(first[task]["status"], "queued")
        now = tasks_of(json.loads(await phone.document_at([history[-1].hash], sent.thread_id)))
        self.assertIn(task, now)
        self.assertNotEqual(now[task]["status"], "queued")
        index = await phone.history(limit=2)
        self.assertEqual(len(index), 2)

        # The desktop agrees.
        shown = self.desk.cli("show", task)
        self.assertIn("hi", json.dumps(shown))

        # The thread as a conversation: the prompt, the approval asked, the desktop's answer.
        conversation = await phone.conversation(sent.thread_id[:8])
        self.assertEqual(
            [m.kind for m in conversation],
            [MessageKind.PROMPT, MessageKind.APPROVAL, MessageKind.ANSWER],
            conversation,
        )
        self.assertEqual((conversation[0].text, conversation[0].by), ("/sh echo hi", "pocket"))
        self.assertEqual((conversation[1].state, conversation[1].reply_by), ("approved", "pocket"))
        self.assertEqual((conversation[2].text.strip(), conversation[2].by), ("hi", "desk"))
        self.assertEqual(await phone.questions(), [])

    async def test_a_schedule_made_on_the_phone_is_the_desktop_s_to_run(self):
        rec = Recorder()
        phone = await self.pair(rec)
        spec = ScheduleSpec(cron="30 7 * * MON-FRI", every=None, time_zone="America/New_York",
                            thread_id=None, target=None, missed="skip", text="/sh uptime")
        made = await phone.schedule_add(spec)
        self.assertEqual(made.rule, "cron 30 7 * * MON-FRI (America/New_York)")
        self.assertEqual((made.target_name, made.missed_rule), ("desk", "skip"))
        self.assertIsNotNone(made.next_run_ms)
        with self.assertRaises(ErrandError.InvalidInput):
            await phone.schedule_add(ScheduleSpec(cron=None, every="5 minutes", time_zone=None,
                                                  thread_id=None, target=None, missed=None,
                                                  text="/sh uptime"))
        await phone.sync_now(5000)
        # The desktop, a real `errand` process, holds it as the phone made it.
        listed = self.desk.cli("schedule", "list")
        self.assertEqual([(s["id"], s["next_run"]) for s in listed], [(made.id, made.next_run_ms)])
        paused = await phone.schedule_pause(made.id[:6])
        self.assertTrue(paused.paused)
        await phone.schedule_remove(made.id)
        self.assertEqual(await phone.schedule_list(), [])

    async def test_a_task_sent_while_the_desktop_is_down_arrives_when_it_is_back(self):
        rec = Recorder()
        phone = await self.pair(rec)
        await self.wait(rec, "desk connected",
                        lambda e: e.is_peer_connected() and e.name == "desk")

        self.desk.kill()
        sent = await phone.send("/sh echo later")
        task = sent.task_id
        self.assertFalse(sent.delivered)
        await self.wait(rec, "task queued", task_changed(task, TaskStatus.QUEUED))
        self.assertFalse(await phone.wait_delivered(task, 300))
        self.assertEqual((await phone.task(task)).status, TaskStatus.QUEUED)

        self.desk.serve()
        # The desktop got it: it ran it up to the approval.
        asked = await self.wait(
            rec,
            "approval requested after restart",
            lambda e: e.is_approval_requested() and e.task_id == task,
        )
        self.assertTrue(await phone.wait_delivered(task, 5000))
        await phone.decide(asked.approval_id, True)
        done = await self.wait(rec, "task done", task_changed(task, TaskStatus.DONE))
        self.assertEqual((done.result or "").strip(), "later")

    async def test_a_large_result_is_an_artifact_fetched_from_the_desktop(self):
        rec = Recorder()
        phone = await self.pair(rec)
        sent = await phone.send("/sh seq 1 30000")
        task = sent.task_id
        asked = await self.wait(
            rec, "approval requested",
            lambda e: e.is_approval_requested() and e.task_id == task,
        )
        await phone.decide(asked.approval_id, True)
        await self.wait(rec, "task done", task_changed(task, TaskStatus.DONE))
        record = await phone.task(task)
        self.assertIn("result.txt", record.result)
        [artifact] = record.artifacts
        self.assertEqual(artifact.name, "result.txt")
        # Fetched from the desktop (only its hash is in the document), then kept here.
        data = await phone.fetch_artifact(task, artifact.hash)
        self.assertEqual(len(data), artifact.size)
        self.assertEqual(data.decode().split(), [str(i) for i in range(1, 30001)])
        self.assertEqual(await phone.fetch_artifact(task, artifact.hash), data)
        with self.assertRaises(ErrandError.NotFound):
            await phone.fetch_artifact(task, "00" * 32)

    async def test_listener_failures_never_reach_the_app(self):
        rec = Recorder()
        bad = Exploding()
        ticket = self.desk.up()
        phone = await self.open_phone()
        phone.subscribe(bad)
        phone.subscribe(rec)
        await phone.pair(ticket, "pocket")
        sent = await phone.send("/sh echo hi")
        await self.wait(rec, "approval requested",
                        lambda e: e.is_approval_requested() and e.task_id == sent.task_id)
        # The throwing listener was called for those events too, and events kept coming.
        self.assertGreaterEqual(bad.calls, 3)
        # A cancelled subscription gets nothing more.
        sub = phone.subscribe(Exploding())
        sub.cancel()
        self.assertTrue(sub.is_cancelled())
        self.assertTrue((await phone.status()).paired)

    async def test_errors_are_kinds_with_readable_messages(self):
        phone = await self.open_phone()
        with self.assertRaises(ErrandError.NotPaired) as cm:
            await phone.send("hello")
        self.assertIn("not paired", str(cm.exception))
        with self.assertRaises(ErrandError.InvalidInput) as cm:
            await phone.pair("ERRAND-nonsense")
        self.assertIn("ticket", str(cm.exception))
        with self.assertRaises(ErrandError.InvalidInput):
            await Node.open(str(self.root / "other"), "not an address")
        status = await phone.status()
        self.assertFalse(status.paired)
        self.assertIsNone(status.space_id)

        await phone.close()
        self.assertTrue(phone.is_closed())
        with self.assertRaises(ErrandError.Closed):
            await phone.status()
        # Closing released the directory: it opens again at once.
        self.phone = await Node.open(str(self.root / "phone"), "127.0.0.1:0")
        self.assertEqual((await self.phone.status()).device_id, status.device_id)


if __name__ == "__main__":
    unittest.main()
