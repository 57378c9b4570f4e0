"""An AMQP 1.0 broker that speaks the part of Azure Service Bus this project uses, for tests.

The unmodified azure-servicebus SDK connects to it with a development connection string
(``Endpoint=sb://127.0.0.1:PORT;SharedAccessKeyName=...;SharedAccessKey=...;UseDevelopmentEmulator=true``:
the SDK then keeps the port and speaks plain AMQP). It is written on python-qpid-proton, not on the SDK's
own AMQP code, so the two do not share beliefs. ``entity`` holds the queue's rules, ``management`` the
request-response operations, ``wire`` the message stamping, ``server`` the AMQP plumbing and ``process``
the test-side handle that starts and stops it by PID.
"""
