"""Sample documents and the client API key for the offline LLM server tests."""

from __future__ import annotations

FIRE = (
    "Acme Corp, a supplier based in Taiwan, reported a fire at its Hsinchu plant on 2024-03-05. "
    "The fire halted production of semiconductors for Globex Industries and Initech. "
    "Analysts at Contoso Research expect shipments to Germany to fall by 12% and revenue to "
    "drop by 4,500,000 USD. The operational risk is rated high."
)
STRIKE = (
    "Dockworkers at the port of Rotterdam in the Netherlands began a strike on 2024-06-11. "
    "Northwind Traders said container deliveries to France would slip by two weeks. "
    "The financial exposure is considered low, but logistics delays may spread to Belgium."
)
INVOICE = (
    "Invoice 2291 from Fabrikam Ltd to Tailspin Toys, dated 2023-11-30, covers 40 units of "
    "industrial valves. The total amount due is 18,250 EUR, payable within 30 days."
)
TEXTS = (FIRE, STRIKE, INVOICE)

API_KEY = "sk-offline-test-key"
