-- wrk script: POST a small create-task body with the API key from SIE_KEY.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Salad-Api-Key"] = os.getenv("SIE_KEY")
wrk.body = '{"modelInputs": {"prompt": "An oil painting of a salad", "num_inference_steps": 2, "width": 64, "height": 64}}'
