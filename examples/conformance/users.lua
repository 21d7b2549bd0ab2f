-- Users for the auth conformance profile (examples/conformance/auth.lua).
-- Passwords are stored hashed: made with `moonstream hash` (PBKDF2-HMAC-SHA256,
-- 100000 iterations, 32-byte key, random salt). fred: y4b4d4b4d00, wilma: pebbles
-- (the profile's published test passwords).
return {
  fred = {
    password = "O6U92NrW21C6wpuU8JpPZjA3UJ8R1hHQ3l6nXiQJlCY=1lOVQjZg4jlfbfPf1w0edg==",
    clientData = { favouriteColor = "red", id = 17 },
    serverData = { role = "admin" },
  },
  wilma = {
    password = "P5cUfZ8CZsmkKSVyGgtbcL7sACCTGQG7ss6gEXliaCA=zMbs1hWvWQDvQtRcpZnbzQ==",
    serverData = { role = "user" },
  },
}
