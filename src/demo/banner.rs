//! What the demo prints: where everything is and the keys at start, with a
//! `curl` to try at once, and once seeding is done the same again with the
//! next things to try. Plain text, so a person can copy from it and a test
//! can read it (each address or key is the last word of its line).

use super::seed::Seeded;
use std::net::SocketAddr;

pub struct Banner {
    pub proxy: SocketAddr,
    pub simulator: SocketAddr,
    pub client_key: String,
    pub admin_token: String,
    /// The configured port, when it was busy and the demo took another.
    pub busy_port: Option<u16>,
}

impl Banner {
    fn addresses(&self) -> String {
        let Self {
            proxy, simulator, ..
        } = self;
        let moved = match self.busy_port {
            Some(port) => format!(
                "  Port {port} was busy, so the demo listens on port {} instead.\n",
                proxy.port()
            ),
            None => String::new(),
        };
        format!(
            "  OpenAI base URL   http://{proxy}/v1\n\
             \x20 Admin UI          http://{proxy}/admin/\n\
             \x20 Simulator         http://{simulator}/v1  (the stand-in provider)\n\
             \x20 Client key        {}\n\
             \x20 Admin token       {}\n{moved}",
            self.client_key, self.admin_token
        )
    }

    /// A chat completion through the proxy with the client key.
    pub fn curl(&self) -> String {
        format!(
            "  curl -s http://{}/v1/chat/completions \\\n\
             \x20   -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n\
             \x20   -d '{{\"model\":\"triage\",\"messages\":[{{\"role\":\"user\",\"content\":\"Endpoint alert: LSASS memory read by rundll32.exe comsvcs.dll MiniDump\"}}]}}'\n",
            self.proxy, self.client_key
        )
    }

    /// At start, before seeding.
    pub fn starting(&self, seed_count: usize) -> String {
        let seeding = if seed_count == 0 {
            String::new()
        } else {
            format!(
                "Sending {seed_count} real alerts through the proxy so the admin UI has conversations to show…\n"
            )
        };
        format!(
            "\nFlywheel demo is starting (Ctrl-C stops it; its data is thrown away).\n\n{}\n\
             Try it now, while the demo seeds:\n{}\n{seeding}",
            self.addresses(),
            self.curl()
        )
    }

    /// Once seeding is done: everything again, and what to do next.
    pub fn ready(&self, seeded: &Seeded) -> String {
        let summary = if seeded.sent == 0 {
            "Nothing was seeded (--seed 0): chats you send show up in the review queue.\n"
                .to_string()
        } else {
            let failed = if seeded.failed > 0 {
                format!(" ({} failed; see the log)", seeded.failed)
            } else {
                String::new()
            };
            format!(
                "Seeded {} conversations through the proxy: {} labelled and approved by a demo analyst, the rest waiting for review{failed}.\n",
                seeded.sent, seeded.approved
            )
        };
        format!(
            "\nFlywheel demo is ready (Ctrl-C stops it; its data is thrown away).\n\n{}\n{summary}\n\
             Next:\n\
             \x20 1. Chat through the proxy as an app would:\n{}\
             \x20 2. Open the Admin UI, sign in with the admin token, and review the queue (Review).\n\
             \x20 3. Make the model better: Overview → \"Improve the model\" builds a dataset of the\n\
             \x20    approved conversations, fine-tunes on it, evaluates the result against production\n\
             \x20    and promotes it if it is better (the README shows the same over the API).\n\n",
            self.addresses(),
            self.curl()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banner(busy_port: Option<u16>) -> Banner {
        Banner {
            proxy: "127.0.0.1:41234".parse().unwrap(),
            simulator: "127.0.0.1:41235".parse().unwrap(),
            client_key: "fw-client".into(),
            admin_token: "admin-secret".into(),
            busy_port,
        }
    }

    #[test]
    fn each_address_and_key_is_the_last_word_of_its_line() {
        let text = banner(None).starting(200);
        let last = |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .and_then(|l| l.split_whitespace().last())
                .unwrap()
                .to_string()
        };
        assert_eq!(last("OpenAI base URL"), "http://127.0.0.1:41234/v1");
        assert_eq!(last("Admin UI"), "http://127.0.0.1:41234/admin/");
        assert_eq!(last("Client key"), "fw-client");
        assert_eq!(last("Admin token"), "admin-secret");
        assert!(text.contains("Bearer fw-client"), "{text}");
        assert!(text.contains("Sending 200 real alerts"), "{text}");
        assert!(!text.contains("busy"), "{text}");
    }

    #[test]
    fn the_ready_banner_says_what_was_seeded_and_what_to_try_and_where_the_port_went() {
        let seeded = Seeded {
            sent: 200,
            approved: 134,
            failed: 0,
        };
        let text = banner(Some(8080)).ready(&seeded);
        assert!(
            text.contains("Port 8080 was busy, so the demo listens on port 41234 instead."),
            "{text}"
        );
        assert!(text.contains("Seeded 200 conversations"), "{text}");
        assert!(text.contains("134 labelled and approved"), "{text}");
        for step in ["  1. ", "  2. ", "  3. "] {
            assert!(text.contains(step), "{step} in {text}");
        }
        assert!(text.contains("curl -s http://127.0.0.1:41234/v1/chat/completions"));
        let none = banner(None).ready(&Seeded::default());
        assert!(none.contains("Nothing was seeded"), "{none}");
    }
}
