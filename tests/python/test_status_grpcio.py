"""The KMS MetaStoreStatusService through grpcio stubs generated from the contract protos.

Seeds data through Tessera's producer API, then checks every reader RPC, including the
answers to bad input. Needs TESSERA_ADDR (host:port) of a fresh tesserad.
"""

import os
import unittest

import grpc

from kms import v1_pb2 as kms
from metastore_status import v1_pb2 as ms
from metastore_status import v1_pb2_grpc as ms_grpc
from tessera.status.v1 import status_pb2 as prod
from tessera.status.v1 import status_pb2_grpc as prod_grpc


class StatusContract(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.channel = grpc.insecure_channel(os.environ["TESSERA_ADDR"])
        grpc.channel_ready_future(cls.channel).result(timeout=10)
        cls.q = ms_grpc.MetaStoreStatusServiceStub(cls.channel)
        cls.p = prod_grpc.StatusProducerServiceStub(cls.channel)
        for i in range(3):
            cls.p.RecordRequest(prod.RecordRequestRequest(
                request_id=f"py-kg-{i}", meta_store_type=ms.KEY_GENERATION, status=ms.PROCESSING))
        cls.p.RecordRequest(prod.RecordRequestRequest(
            request_id="py-ud-0", meta_store_type=ms.USER_DECRYPTION, status=ms.FAILED,
            error_message="bad ciphertext"))
        cls.p.UpdateStatus(prod.UpdateStatusRequest(
            request_id="py-kg-1", meta_store_type=ms.KEY_GENERATION, status=ms.COMPLETED))

    def code_of(self, fn, req):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(req)
        return cm.exception.code(), cm.exception.details()

    def test_get_request_statuses(self):
        r = self.q.GetRequestStatuses(ms.GetRequestStatusesRequest(
            request_ids=["py-kg-1", "py-ud-0", "unknown-id"]))
        got = {(s.request_id, s.meta_store_type, s.status) for s in r.statuses}
        self.assertEqual(got, {("py-kg-1", ms.KEY_GENERATION, ms.COMPLETED),
                               ("py-ud-0", ms.USER_DECRYPTION, ms.FAILED)})
        failed = [s for s in r.statuses if s.request_id == "py-ud-0"][0]
        self.assertTrue(failed.HasField("error_message"))
        self.assertEqual(failed.error_message, "bad ciphertext")
        typed = self.q.GetRequestStatuses(ms.GetRequestStatusesRequest(
            request_ids=["py-kg-1", "py-ud-0"], meta_store_type=ms.USER_DECRYPTION))
        self.assertEqual([s.request_id for s in typed.statuses], ["py-ud-0"])

    def test_get_request_statuses_errors(self):
        code, _ = self.code_of(self.q.GetRequestStatuses, ms.GetRequestStatusesRequest(request_ids=["nobody"]))
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND)
        code, details = self.code_of(self.q.GetRequestStatuses,
                                     ms.GetRequestStatusesRequest(request_ids=["ok", "not ok!"]))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("request_ids[1]", details)
        code, _ = self.code_of(self.q.GetRequestStatuses, ms.GetRequestStatusesRequest(request_ids=[]))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_list_requests_pages_across_all_stores(self):
        seen, token = [], None
        while True:
            req = ms.ListRequestsRequest(meta_store_type=ms.ALL, max_results=2)
            if token:
                req.page_token = token
            r = self.q.ListRequests(req)
            self.assertLessEqual(len(r.requests), 2)
            seen += [x.request_id for x in r.requests]
            if not r.HasField("next_page_token"):
                break
            token = r.next_page_token
        self.assertEqual(seen, ["py-kg-0", "py-kg-1", "py-kg-2", "py-ud-0"])
        processing = self.q.ListRequests(ms.ListRequestsRequest(meta_store_type=ms.ALL, status_filter=ms.PROCESSING))
        self.assertEqual([x.request_id for x in processing.requests], ["py-kg-0", "py-kg-2"])
        anything = self.q.ListRequests(ms.ListRequestsRequest(meta_store_type=ms.KEY_GENERATION, status_filter=ms.ANY))
        self.assertEqual(len(anything.requests), 3)

    def test_list_requests_errors(self):
        code, _ = self.code_of(self.q.ListRequests, ms.ListRequestsRequest(page_token="garbage"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        code, _ = self.code_of(self.q.ListRequests, ms.ListRequestsRequest(max_results=-5))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        first = self.q.ListRequests(ms.ListRequestsRequest(meta_store_type=ms.ALL, max_results=1))
        code, details = self.code_of(self.q.ListRequests, ms.ListRequestsRequest(
            meta_store_type=ms.KEY_GENERATION, max_results=1, page_token=first.next_page_token))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("different", details)
        code, _ = self.code_of(self.q.ListRequests, ms.ListRequestsRequest(meta_store_type=42))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_get_meta_store_info(self):
        r = self.q.GetMetaStoreInfo(kms.Empty())
        by_type = {m.type: m for m in r.meta_stores}
        for t in (ms.KEY_GENERATION, ms.PUBLIC_DECRYPTION, ms.USER_DECRYPTION, ms.CRS_GENERATION, ms.PREPROCESSING):
            self.assertIn(t, by_type)
            self.assertEqual(by_type[t].capacity, -1)
        self.assertEqual(by_type[ms.KEY_GENERATION].current_count, 3)
        self.assertEqual(by_type[ms.USER_DECRYPTION].current_count, 1)


if __name__ == "__main__":
    unittest.main()
