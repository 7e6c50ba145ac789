from proto.burst.v1 import job_pb2 as _job_pb2
from proto.burst.v1 import output_pb2 as _output_pb2
from proto.burst.v1 import peer_pb2 as _peer_pb2
from proto.burst.v1 import token_pb2 as _token_pb2
from proto.burst.v1 import worker_pb2 as _worker_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
