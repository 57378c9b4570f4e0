"""Ticket requests: a Halo ticket (New Starter, Leaver) becomes a person's plan, approved in the ticket, run on
its dates, and reported back in the ticket.

- ``http``: ``POST /api/halo/tickets`` (webhook deliveries and runbook bodies) and
  ``GET /api/halo/requests/{request_id}``.
- ``service``: reads the ticket, creates the Halo user of a joiner, posts the plan, reads the approval,
  queues or schedules the phases, posts the results (called by the worker and the timer).
- ``writes``: the Halo writes made at most once per request and purpose (journal-claimed).
- ``planning`` (pure): which request a ticket is, its person, dated phases, digest, approval state.
- ``notes`` (pure): the notes' text. ``store`` / ``table``: where requests are kept.
"""
