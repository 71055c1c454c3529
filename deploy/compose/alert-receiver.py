"""Example Alertmanager webhook receiver for the compose stack: prints each notification.

It shares the network namespace of the alertmanager service (network_mode in compose.yaml),
so the placeholder URLs of deploy/alertmanager/alertmanager.yml (http://127.0.0.1:5001/...)
reach it unchanged. Read it with: docker compose -f deploy/compose.yaml logs -f alert-receiver
Replace it with a real receiver (PagerDuty, Slack, ...) in alertmanager.yml.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            msg = json.loads(body)
            for a in msg.get("alerts", []):
                labels, ann = a.get("labels", {}), a.get("annotations", {})
                print(
                    f"{self.path} {a.get('status', '?').upper():8} {labels.get('alertname')} "
                    f"subject={labels.get('subject', '')} model={labels.get('model', '')} "
                    f"like_rate={ann.get('like_rate', '')} samples={ann.get('samples', '')} "
                    f"| {ann.get('summary', '')}",
                    flush=True,
                )
        except ValueError:
            print(f"{self.path} unparsable body: {body[:200]!r}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    print("alert-receiver listening on 127.0.0.1:5001", flush=True)
    HTTPServer(("127.0.0.1", 5001), Receiver).serve_forever()
    sys.exit(0)
