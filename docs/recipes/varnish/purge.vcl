vcl 4.1;

# Cache invalidation for the broadcast router: PURGE one URL, BAN by
# regex, or PURGE every object tagged with a surrogate key (vmod xkey).
# The router sends each request to every Varnish pod with the client's
# Host (route `host = "client"`), so the hash below finds the objects the
# site's visitors fetched.

import std;
import xkey;

# The application this Varnish caches (a sidecar on the same pod).
backend default {
    .host = "127.0.0.1";
    .port = "8080";
}

# Who may invalidate: the broadcast router's pods. Requests reach Varnish
# from the router's pod address (in tests, from 127.0.0.1).
acl purgers {
    "127.0.0.1";
    "10.0.0.0"/8;
}

sub vcl_recv {
    if (req.method == "PURGE" || req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        # The router marks every copy with Via and X-Broadcast-Id; keep the
        # id in the log so one broadcast can be followed across caches.
        std.log("invalidation " + req.method + " " + req.http.host + req.url
            + " broadcast " + req.http.X-Broadcast-Id);
    }
    if (req.method == "PURGE") {
        if (req.http.xkey-purge) {
            # Every object tagged with one of these keys, whatever its URL.
            set req.http.n-gone = xkey.purge(req.http.xkey-purge);
            return (synth(200, "Purged " + req.http.n-gone + " objects"));
        }
        # The one object of this Host and URL (the default hash).
        return (purge);
    }
    if (req.method == "BAN") {
        if (!req.http.X-Ban-Url) {
            return (synth(400, "BAN needs an X-Ban-Url regex"));
        }
        # Every object of this Host whose URL matches the regex, checked
        # lazily by the ban lurker (hence the x-url and x-host copies).
        ban("obj.http.x-host == " + req.http.host
            + " && obj.http.x-url ~ " + req.http.X-Ban-Url);
        return (synth(200, "Banned"));
    }
}

sub vcl_synth {
    # Answers to invalidations in plain text: the router's report shows
    # each pod's body, e.g. "Purged 2 objects".
    if (req.method == "PURGE" || req.method == "BAN") {
        set resp.http.content-type = "text/plain; charset=utf-8";
        set resp.body = resp.reason;
        return (deliver);
    }
}

sub vcl_backend_response {
    # Lurker-friendly bans: keep the URL and Host on the object.
    set beresp.http.x-url = bereq.url;
    set beresp.http.x-host = bereq.http.host;
}

sub vcl_deliver {
    unset resp.http.x-url;
    unset resp.http.x-host;
    unset resp.http.xkey;
}
