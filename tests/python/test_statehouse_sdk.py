"""The public `statehouse` Python SDK, unchanged, against tesserad.

Needs TESSERA_ADDR (host:port) of a fresh tesserad. Tested with statehouse 0.1.1 (see
requirements.txt). Values come back shallow-converted with numbers as floats, as the SDK does.
"""

import os
import time
import unittest

from statehouse import Statehouse, StatehouseError, Transaction, TransactionError
from statehouse.exceptions import ConnectionError as SHConnectionError


class StatehouseSdk(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = Statehouse(url=os.environ["TESSERA_ADDR"])

    def test_health_and_version(self):
        self.assertEqual(self.c.health(), "ok")
        version, sha = self.c.version()
        self.assertTrue(version.startswith("tessera "))
        self.assertTrue(sha)

    def test_context_manager_commit_and_versions(self):
        with self.c.begin_transaction() as tx:
            tx.write(agent_id="cm", key="memory", value={"fact": "sky is blue", "n": 1})
            tx.write(agent_id="cm", key="other", value={"x": True})
        r = self.c.get_state(agent_id="cm", key="memory")
        self.assertTrue(r.exists)
        self.assertEqual(r.value, {"fact": "sky is blue", "n": 1.0})
        self.assertEqual(r.version, 1)
        first_ts = r.commit_ts
        self.assertGreater(first_ts, 0)
        self.assertEqual(self.c.get_state(agent_id="cm", key="other").commit_ts, first_ts)
        with self.c.begin_transaction() as tx:
            tx.write(agent_id="cm", key="memory", value={"fact": "sky is grey", "n": 2})
        r2 = self.c.get_state(agent_id="cm", key="memory")
        self.assertEqual((r2.version, r2.value["n"]), (2, 2.0))
        self.assertGreater(r2.commit_ts, first_ts)
        old = self.c.get_state_at_version(agent_id="cm", key="memory", version=1)
        self.assertTrue(old.exists)
        self.assertEqual(old.value["fact"], "sky is blue")
        self.assertEqual(old.commit_ts, first_ts)
        missing = self.c.get_state_at_version(agent_id="cm", key="memory", version=99)
        self.assertFalse(missing.exists)
        self.assertIsNone(missing.value)

    def test_context_manager_aborts_on_exception(self):
        with self.assertRaises(ValueError):
            with self.c.begin_transaction() as tx:
                tx.write(agent_id="ab", key="tmp", value={"x": 1})
                raise ValueError("boom")
        self.assertFalse(self.c.get_state(agent_id="ab", key="tmp").exists)

    def test_explicit_begin_commit_abort(self):
        tx = self.c.begin_transaction()
        tx.write(agent_id="ex", key="k", value={"v": 1})
        ts = tx.commit()
        self.assertGreater(ts, 0)
        with self.assertRaises(TransactionError):
            tx.commit()
        tx = self.c.begin_transaction()
        tx.write(agent_id="ex", key="k", value={"v": 99})
        tx.abort()
        tx.abort()
        self.assertEqual(self.c.get_state(agent_id="ex", key="k").value, {"v": 1.0})

    def test_deletes_are_tombstones(self):
        with self.c.begin_transaction() as tx:
            tx.write(agent_id="del", key="k", value={"v": 1})
            tx.write(agent_id="del", key="keep", value={})
        with self.c.begin_transaction() as tx:
            tx.delete(agent_id="del", key="k")
        r = self.c.get_state(agent_id="del", key="k")
        self.assertFalse(r.exists)
        self.assertIsNone(r.value)
        self.assertEqual(r.version, 2)
        self.assertEqual(self.c.list_keys(agent_id="del"), ["keep"])
        self.assertEqual(self.c.get_state(agent_id="del", key="keep").value, {})
        never = self.c.get_state(agent_id="del", key="never")
        self.assertEqual((never.exists, never.version, never.commit_ts), (False, 0, 0))
        ops = [op for e in self.c.replay(agent_id="del") for op in e.operations]
        self.assertIn(("k", None, 2), [(op.key, op.value, op.version) for op in ops])

    def test_list_and_scan(self):
        with self.c.begin_transaction() as tx:
            for k in ("task:1", "task:2", "note"):
                tx.write(agent_id="ls", key=k, value={"k": k})
            tx.write(agent_id="ls", key="task:empty", value={})
        self.assertEqual(self.c.list_keys(agent_id="ls"), ["note", "task:1", "task:2", "task:empty"])
        scanned = self.c.scan_prefix(agent_id="ls", prefix="task:")
        self.assertEqual(len(scanned), 3)
        self.assertEqual([s.value.get("k") for s in scanned], ["task:1", "task:2", None])
        self.assertEqual(self.c.list_keys(agent_id="ls", namespace="elsewhere"), [])
        with self.c.begin_transaction(namespace="elsewhere") as tx:
            tx.write(agent_id="ls", key="only-here", value={"a": 1})
        self.assertEqual(self.c.list_keys(agent_id="ls", namespace="elsewhere"), ["only-here"])
        self.assertNotIn("only-here", self.c.list_keys(agent_id="ls"))

    def test_replay_windows(self):
        stamps = []
        for i in range(4):
            with self.c.begin_transaction() as tx:
                tx.write(agent_id="rp", key=f"k{i}", value={"i": i})
            stamps.append(self.c.get_state(agent_id="rp", key=f"k{i}").commit_ts)
        all_events = list(self.c.replay(agent_id="rp"))
        self.assertEqual([e.commit_ts for e in all_events], stamps)
        self.assertEqual(all_events[0].operations[0].key, "k0")
        self.assertEqual(all_events[0].operations[0].value, {"i": 0.0})
        mid = list(self.c.replay(agent_id="rp", start_ts=stamps[1], end_ts=stamps[2]))
        self.assertEqual([e.commit_ts for e in mid], stamps[1:3])
        self.assertEqual([e.commit_ts for e in self.c.replay(agent_id="rp", start_ts=stamps[3])], stamps[3:])
        self.assertEqual(list(self.c.replay(agent_id="rp", end_ts=0)), [])
        self.assertEqual(list(self.c.replay(agent_id="nobody")), [])

    def test_timeouts(self):
        tx = self.c.begin_transaction(timeout_ms=200)
        tx.write(agent_id="to", key="early", value={"x": 1})
        time.sleep(0.5)
        with self.assertRaises(TransactionError) as cm:
            tx.write(agent_id="to", key="late", value={"x": 1})
        self.assertIn("expired", str(cm.exception))
        with self.assertRaises(TransactionError):
            tx.commit()
        self.assertFalse(self.c.get_state(agent_id="to", key="early").exists)

    def test_errors_become_sdk_exceptions(self):
        with self.assertRaises(TransactionError) as cm:
            Transaction(self.c, "no-such-txn").commit()
        self.assertIn("not found", str(cm.exception))
        tx = self.c.begin_transaction()
        with self.assertRaises(TransactionError) as cm:
            tx.write(agent_id="", key="k", value={"x": 1})
        self.assertIn("agent_id", str(cm.exception))
        with self.assertRaises(TransactionError):
            tx.write(agent_id="a", key="k" * 2000, value={"x": 1})
        with self.assertRaises(StatehouseError):
            self.c.get_state(agent_id="a", key="")
        with self.assertRaises(SHConnectionError):
            Statehouse(url="127.0.0.1:1").health()


if __name__ == "__main__":
    unittest.main()
