-- wrk script: GET one task's status with the API key from SIE_KEY.
wrk.headers["Salad-Api-Key"] = os.getenv("SIE_KEY")
